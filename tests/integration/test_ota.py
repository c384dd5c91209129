"""OTA logic against a real HTTP server, real downloads, the real store and real inference.

The MQTT path (command layer, signatures, acks over a broker) is in test_ota_mqtt.py.
"""

from __future__ import annotations

import base64
import functools
import http.server
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent import modelstore, ota
from edge_agent.bundle import load_private_key, read_bundle, sha256_file
from edge_agent.commands import Ack, CommandError
from tests.fixtures_ssh import BundleSet, DeployKeys
from tests.ota_device import InferenceHost

pytestmark = pytest.mark.integration


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    root = tmp_path_factory.mktemp("www")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def publish(http_root: tuple[Path, str], bundle: Path) -> dict[str, object]:
    root, base = http_root
    shutil.copy(bundle, root / bundle.name)
    return {"url": f"{base}/{bundle.name}", "sha256": sha256_file(bundle), "size": bundle.stat().st_size}


@pytest.fixture
def device(tmp_path: Path, deploy_keys: DeployKeys, test_bundles: BundleSet) -> Iterator[InferenceHost]:
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(deploy_keys.public, state / modelstore.TRUSTED_KEY)
    modelstore.install_model(test_bundles.good, state)
    host = InferenceHost(state, None).start()
    yield host
    host.stop()


def run_update(host: InferenceHost, args: dict[str, object],
               policy: ota.ProbationPolicy | None = None) -> tuple[list[Ack], float]:
    updater = ota.OtaUpdater(host, policy or ota.ProbationPolicy())
    acks: list[Ack] = []
    t0 = time.monotonic()
    updater.start_update(ota.parse_update_args(args), "cmd-1", acks.append)
    updater.join(60)
    assert acks and acks[-1].status in ("succeeded", "failed")
    return acks, time.monotonic() - t0


def test_update_succeeds_and_swaps_running_model(device: InferenceHost, http_root: tuple[Path, str],
                                                 test_bundles: BundleSet) -> None:
    args = {**publish(http_root, test_bundles.good_v2), "probation_s": 1.0}
    acks, elapsed = run_update(device, args)
    assert [a.status for a in acks] == ["in_progress", "succeeded"], acks
    assert "probation" in acks[0].reason
    final = acks[-1]
    assert final.result is not None
    assert final.result["active"]["bundle_sha256"] == sha256_file(test_bundles.good_v2)
    assert modelstore.active_model(device.state_dir).sha256 == sha256_file(test_bundles.good_v2)  # type: ignore[union-attr]
    assert modelstore.read_probation(device.state_dir) is None
    assert device.reloads == 1 and device.errors == 0
    assert not list((device.state_dir / ota.DOWNLOADS).iterdir())
    # update -> succeeded includes the 1 s probation
    assert 1.0 <= elapsed < 30
    print(f"update->succeeded {elapsed:.2f} s, swap gap {device.max_gap_s * 1000:.1f} ms, "
          f"timings {final.result['timings']}")


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        ({"sha256": "0" * 64}, "sha256 mismatch"),
        ({"size": 1}, "expected 1"),
        ({"url_suffix": ".missing"}, "download failed"),
    ],
)
def test_download_checks(device: InferenceHost, http_root: tuple[Path, str], test_bundles: BundleSet,
                         mutate: dict[str, object], reason: str) -> None:
    before = modelstore.active_model(device.state_dir).sha256  # type: ignore[union-attr]
    args = publish(http_root, test_bundles.good_v2)
    suffix = mutate.pop("url_suffix", "")
    args = {**args, **mutate, "url": f"{args['url']}{suffix}"}
    acks, _ = run_update(device, args)
    assert [a.status for a in acks] == ["failed"]
    assert reason in acks[0].reason
    assert modelstore.active_model(device.state_dir).sha256 == before  # type: ignore[union-attr]
    assert device.reloads == 0


def test_bad_signatures_refused(device: InferenceHost, http_root: tuple[Path, str],
                                test_bundles: BundleSet, deploy_keys: DeployKeys) -> None:
    before = modelstore.active_model(device.state_dir).sha256  # type: ignore[union-attr]
    acks, _ = run_update(device, publish(http_root, test_bundles.wrong_signature))
    assert acks[-1].status == "failed" and "does not verify" in acks[-1].reason
    acks, _ = run_update(device, publish(http_root, test_bundles.unsigned))
    assert acks[-1].status == "failed" and "not signed" in acks[-1].reason
    # the command's own bundle signature: must verify over the manifest with the pinned key
    args = publish(http_root, test_bundles.good_v2)
    wrong = base64.b64encode(bytes(64)).decode()
    acks, _ = run_update(device, {**args, "signature": wrong})
    assert acks[-1].status == "failed" and "bad signature" in acks[-1].reason
    assert modelstore.active_model(device.state_dir).sha256 == before  # type: ignore[union-attr]
    manifest = read_bundle(test_bundles.good_v2).manifest_bytes
    good_sig = base64.b64encode(load_private_key(deploy_keys.private).sign(manifest)).decode()
    acks, _ = run_update(device, {**args, "signature": good_sig, "probation_s": 0})
    assert acks[-1].status == "succeeded", acks


def test_probation_failure_rolls_back(device: InferenceHost, http_root: tuple[Path, str],
                                      test_bundles: BundleSet) -> None:
    """A model whose input the running source does not fit: every inference errors."""
    before = modelstore.active_model(device.state_dir).sha256  # type: ignore[union-attr]
    args = {**publish(http_root, test_bundles.wrong_input), "allow_new_input": True, "probation_s": 10}
    acks, elapsed = run_update(device, args)
    assert [a.status for a in acks] == ["in_progress", "failed"], acks
    assert "probation failed: error rate" in acks[-1].reason
    assert "rolled back to" in acks[-1].reason
    assert modelstore.active_model(device.state_dir).sha256 == before  # type: ignore[union-attr]
    assert device.reloads == 2  # new model, then the old one again
    errors = device.errors
    time.sleep(0.3)
    assert device.errors == errors  # serving again
    assert elapsed < 10  # failed early, well before the end of the probation
    print(f"probation failure -> rolled back in {elapsed:.2f} s")


def test_downgrade_needs_rollback_command(device: InferenceHost, http_root: tuple[Path, str],
                                          test_bundles: BundleSet) -> None:
    acks, _ = run_update(device, {**publish(http_root, test_bundles.good_v2), "probation_s": 0})
    assert acks[-1].status == "succeeded"
    acks, _ = run_update(device, {**publish(http_root, test_bundles.good), "probation_s": 0})
    assert acks[-1].status == "failed" and "downgrades need a signed rollback" in acks[-1].reason
    updater = ota.OtaUpdater(device)
    t0 = time.monotonic()
    ack = updater.rollback("cmd-rb")
    elapsed = time.monotonic() - t0
    assert ack.status == "succeeded", ack
    assert modelstore.active_model(device.state_dir).sha256 == sha256_file(test_bundles.good)  # type: ignore[union-attr]
    print(f"rollback command {elapsed * 1000:.1f} ms (store {ack.result['rollback_ms']} ms)")  # type: ignore[index]


def test_file_url(device: InferenceHost, test_bundles: BundleSet) -> None:
    args = {"url": test_bundles.good_v2.resolve().as_uri(), "sha256": sha256_file(test_bundles.good_v2),
            "size": test_bundles.good_v2.stat().st_size, "probation_s": 0}
    acks, _ = run_update(device, args)
    assert acks[-1].status == "succeeded", acks


def test_crash_counter_during_probation(device: InferenceHost, test_bundles: BundleSet) -> None:
    """Agent restarts while a model is on probation count as crashes; too many roll back."""
    new = modelstore.install_model(test_bundles.good_v2, device.state_dir)
    modelstore.start_probation(device.state_dir, new.active, duration_s=60, max_crashes=1)
    assert modelstore.note_agent_start(device.state_dir) is None  # first crash tolerated
    result = modelstore.note_agent_start(device.state_dir)
    assert result is not None and result.active.sha256 == sha256_file(test_bundles.good)


@pytest.mark.parametrize(
    "args",
    [
        {},
        {"url": "ftp://x/y", "sha256": "a" * 64, "size": 1},
        {"url": "http://h/x", "sha256": "xyz", "size": 1},
        {"url": "http://h/x", "sha256": "a" * 64, "size": 0},
        {"url": "http://h/x", "sha256": "a" * 64, "size": True},
        {"url": "file://remote/etc/passwd", "sha256": "a" * 64, "size": 1},
        {"url": "http://h/x", "sha256": "a" * 64, "size": 1, "extra": 1},
        {"url": "http://h/x", "sha256": "a" * 64, "size": 1, "signature": "!!"},
        {"url": "http://h/x", "sha256": "a" * 64, "size": 1, "probation_s": 1e9},
    ],
)
def test_update_args_strict(args: dict[str, object]) -> None:
    with pytest.raises(CommandError):
        ota.parse_update_args(args)


def test_one_update_at_a_time(device: InferenceHost, http_root: tuple[Path, str],
                              test_bundles: BundleSet) -> None:
    updater = ota.OtaUpdater(device)
    acks: list[Ack] = []
    request = ota.parse_update_args({**publish(http_root, test_bundles.good_v2), "probation_s": 1})
    updater.start_update(request, "a", acks.append)
    with pytest.raises(ota.OtaError, match="busy"):
        updater.start_update(request, "b", acks.append)
    updater.join(60)
    assert acks[-1].status == "succeeded"
