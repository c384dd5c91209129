"""`edge-fleet watch` stops cleanly, with its JSON report, on SIGINT and on SIGTERM — also when it
was started with SIGINT ignored, as every process started from a script's background job is
(CI found it: Python then never raises KeyboardInterrupt, and the watch never ended)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from deploy.broker import Mosquitto
from tests.integration.agent_helpers import agent_env
from tests.integration.mqtt_helpers import REPO, wait_until

pytestmark = pytest.mark.integration
HANG = 60  # bounds a hang only


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_watch_stops_on_a_signal_it_inherited_ignored(mqtt_broker_fn: Mosquitto, sig: signal.Signals) -> None:
    mqtt_broker = mqtt_broker_fn  # its own broker: no retained status of other tests in the report
    client_id = f"watch-sig-{sig.name.lower()}"
    # `trap "" INT` then exec: the watch starts with SIGINT ignored, as in a background job
    watch = subprocess.Popen(
        ["sh", "-c", 'trap "" INT; exec "$@"', "sh", sys.executable, "-m", "deploy.fleet", "watch",
         "--broker", mqtt_broker.url, "--json", "--duration", "600", "--client-id", client_id],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=agent_env())
    try:
        assert wait_until(lambda: f"as {client_id} (" in mqtt_broker.log.read_text(), HANG), "watch never connected"
        watch.send_signal(sig)
        out, err = watch.communicate(timeout=HANG)
        assert watch.returncode == 0, err
        assert json.loads(out) == {"devices": []}
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
