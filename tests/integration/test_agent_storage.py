"""The real agent when its storage fails: a full state directory (a 4 MiB tmpfs filled to the
brim) with the broker away and back, a start on a full disk, and damaged state files.

The agent runs the tiny ``colours`` model on a looping folder of three images, ``--fps 20
--events every``: about 20 results a second through the outbox. A real Mosquitto is stopped
and started. Every wait is for an event, with a deadline that only bounds a hang.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from deploy.broker import Mosquitto
from edge_agent.messaging.link import MqttSettings
from tests.fixtures_disk import fill
from tests.fixtures_mqtt import Collector
from tests.integration.mqtt_helpers import RealAgent, outbox_rows, wait_until

pytestmark = pytest.mark.integration

EVT = "evt/classification"
HANG = 60.0  # deadline of a wait: only there so that a hang fails instead of blocking the run
CANNOT_STORE = "outbox cannot store messages (disk_full)"
STORES_AGAIN = "outbox stores messages again"
STATE_FILES = ("outbox.db", "command-ids", "seq", "desired-version", "config-overrides.json", "probation.json")


@pytest.fixture
def colour_frames(tmp_path: Path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, bgr in enumerate([(0, 0, 255), (0, 255, 0), (255, 0, 0)]):
        assert cv2.imwrite(str(folder / f"{i}.png"), np.full((30, 40, 3), bgr, np.uint8))
    return folder


@pytest.fixture
def storage_agent(agent_models_dir: Path, colour_frames: Path, tmp_path: Path
                  ) -> Iterator[Callable[[Mosquitto, str, Path], RealAgent]]:
    """Starts the real ``edge-agent run --broker`` with STATE as its state directory; killed at teardown."""
    config = tmp_path / "agent.toml"  # reconnect within 1-2 s once the broker is back
    config.write_text("[mqtt]\nreconnect_min_s = 1\nreconnect_max_s = 2\n")
    made: list[RealAgent] = []

    def start(broker: Mosquitto, device_id: str, state: Path) -> RealAgent:
        agent = RealAgent(broker.url, device_id, state, agent_models_dir / "colours.tflite", colour_frames,
                          "--config", str(config), fps=20, health_interval=0.5)
        made.append(agent)
        return agent

    yield start
    for agent in made:
        agent.close()


def _collector(factory: Callable[..., Collector], broker: Mosquitto, device_id: str) -> Collector:
    # A persistent session: the broker keeps what the agent sends while the collector reconnects.
    return factory(MqttSettings(broker=broker.url, keepalive=5, reconnect_max_s=1), f"edge/v1/{device_id}/#",
                   client_id=f"col-{device_id}", session_expiry_s=600)


def _results(col: Collector) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in col.on(EVT) if not m.retain]


def _outboxes(col: Collector) -> list[dict[str, Any]]:
    """The ``outbox`` figures of every health message, in arrival order."""
    return [h["outbox"] for h in col.json("health") if isinstance(h.get("outbox"), dict)]


def test_full_disk_with_the_broker_away_runs_on_restarts_and_drains(
    mqtt_broker_fn: Mosquitto, collector_factory: Callable[..., Collector], unique_id: str, small_disk: Path,
    storage_agent: Callable[[Mosquitto, str, Path], RealAgent],
) -> None:
    broker, state = mqtt_broker_fn, small_disk
    col = _collector(collector_factory, broker, unique_id)
    first = storage_agent(broker, unique_id, state)
    assert col.wait(lambda: len(_results(col)) >= 5, HANG), first.log()
    broker.stop()

    def queued() -> set[int]:
        return {r["seq"] for r in outbox_rows(state) if r["topic"].endswith(EVT)}

    assert wait_until(lambda: len(queued()) >= 20, HANG), first.log()
    ballast = fill(state)
    assert wait_until(lambda: CANNOT_STORE in first.log(), HANG), first.log()
    assert first.alive, first.log()  # it infers on; what it cannot store is counted
    waiting = queued()
    assert first.terminate() == 0, first.log()

    second = storage_agent(broker, unique_id, state)  # a restart on the still full disk
    assert wait_until(lambda: CANNOT_STORE in second.log(), HANG), second.log()
    assert second.alive, second.log()
    broker.start()

    def drained_and_live() -> bool:
        outboxes = _outboxes(col)
        return (waiting <= {r["seq"] for r in _results(col)}
                and any(o["dropped"]["disk_full"] > 0 and o["sent_unstored"] > 0 for o in outboxes))

    # What was queued before the disk filled goes out; new results go out live though nothing can be stored.
    assert col.wait(drained_and_live, HANG), (second.log(), _outboxes(col)[-1:])
    replayed = [r for r in _results(col) if r["seq"] in waiting]
    assert all(r["replayed"] for r in replayed if r["session"] == replayed[-1]["session"])
    seen = len(_results(col))
    ballast.unlink()
    assert wait_until(lambda: STORES_AGAIN in second.log(), HANG), second.log()
    assert col.wait(lambda: len(_results(col)) >= seen + 20, HANG), second.log()
    assert second.terminate() == 0, second.log()
    # The rows delivered while the disk was full were deleted once it had room again.
    assert not waiting & {r["seq"] for r in outbox_rows(state)}, second.log()
    assert "Traceback" not in first.log() + second.log()


def test_starts_on_a_full_disk_and_publishes_live(
    mqtt_broker_fn: Mosquitto, collector_factory: Callable[..., Collector], unique_id: str, small_disk: Path,
    storage_agent: Callable[[Mosquitto, str, Path], RealAgent],
) -> None:
    broker = mqtt_broker_fn
    col = _collector(collector_factory, broker, unique_id)
    fill(small_disk)
    agent = storage_agent(broker, unique_id, small_disk)
    assert col.wait(lambda: len(_results(col)) >= 20 and any(o["sent_unstored"] > 0 for o in _outboxes(col)),
                    HANG), agent.log()
    seqs = [r["seq"] for r in _results(col)]
    assert seqs == sorted(set(seqs)), "counted in memory: no number repeats"
    assert agent.terminate() == 0, agent.log()
    assert "Traceback" not in agent.log()


def test_damaged_state_files_are_set_aside_counted_and_the_agent_runs(
    mqtt_broker: Mosquitto, collector_factory: Callable[..., Collector], unique_id: str, tmp_path: Path,
    storage_agent: Callable[[Mosquitto, str, Path], RealAgent],
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    garbage = b"\xff\xfe\x00garbage \x80\x81\n" * 300  # what a power cut on an SD card may leave
    for name in STATE_FILES:
        (state / name).write_bytes(garbage)
    col = _collector(collector_factory, mqtt_broker, unique_id)
    agent = storage_agent(mqtt_broker, unique_id, state)

    def counted() -> bool:
        return any(h.get("state_files_set_aside") == dict.fromkeys(STATE_FILES, 1) for h in col.json("health"))

    assert col.wait(lambda: len(_results(col)) >= 5 and counted(), HANG), (agent.log(), col.json("health")[-1:])
    assert agent.terminate() == 0, agent.log()
    for name in STATE_FILES:
        [aside] = state.glob(f"{name}.corrupt-*[0-9]Z")
        assert aside.read_bytes() == garbage
        assert agent.log().count(f"damaged state file {state / name} ") == 1
    assert "Traceback" not in agent.log()
