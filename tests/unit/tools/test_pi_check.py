"""tools/pi_check's own logic: the per-frame comparison, the Pi's cpuinfo, the wheel resolution
arguments, the cache and the step report (the emulation itself is `make pi-check`)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tools.pi_check.cache import cached_dir
from tools.pi_check.checks import unit_test_shares
from tools.pi_check.cpus import PI4, PI5
from tools.pi_check.durations import deal, junit_durations, load_durations, store_durations
from tools.pi_check.results import compare_frames, frame_results
from tools.pi_check.steps import StepError, StepReport
from tools.pi_check.wheels import PLATFORMS, device_requirements, platform_args

ROOT = Path(__file__).resolve().parents[3]


def _line(frame: int, label: str, seq: int, latency: float) -> str:
    payload = {"seq": seq, "ts_ms": 1000 + seq, "session": f"s{seq}", "latency_ms": latency, "frame": frame,
               "classes": [{"label": label, "score": 0.99}]}
    return json.dumps({"topic": "edge/v1/d/evt/classification", "payload": payload})


def _stdout(labels: list[str], seq0: int = 0) -> str:
    status = json.dumps({"topic": "edge/v1/d/status", "payload": {"state": "online"}})
    return "\n".join([status, *(_line(n, label, seq0 + n, 0.1 * n) for n, label in enumerate(labels))])


def test_times_and_sequence_numbers_may_differ_results_may_not() -> None:
    host = frame_results(_stdout(["7", "1", "3"]))
    assert sorted(host) == [0, 1, 2]
    assert compare_frames(host, frame_results(_stdout(["7", "1", "3"], seq0=40))) == []
    problems = compare_frames(host, frame_results(_stdout(["7", "2", "3"])))
    assert problems[0] == "1 of 3 frames give other results on the Pi"
    assert problems[1].startswith("frame 1 classes: host [{'label': '1'")


def test_missing_frames_and_an_empty_host_run_are_failures() -> None:
    host = frame_results(_stdout(["7", "1", "3"]))
    assert compare_frames(host, frame_results(_stdout(["7", "1"])))[0] == (
        "frames differ: 3 on the host, 2 on the Pi (only host: [2], only Pi: [])")
    assert compare_frames({}, {}) == ["the host run produced no per-frame results"]


def test_cpuinfo_names_the_pi_core() -> None:
    text = PI4.cpuinfo()
    assert text.count("processor\t:") == 4 and text.count("CPU part\t: 0xd08") == 4  # Cortex-A72
    assert "Raspberry Pi 4 Model B" in text
    assert "CPU part\t: 0xd0b" in PI5.cpuinfo() and "asimddp" in PI5.cpuinfo()  # Cortex-A76, dot product
    assert (PI4.qemu_cpu, PI5.qemu_cpu) == ("cortex-a72", "cortex-a76")


def test_wheel_tags_run_newest_first_without_gaps() -> None:
    assert PLATFORMS[0] == "manylinux_2_36_aarch64" and PLATFORMS[-1] == "manylinux2014_aarch64"
    assert "manylinux_2_27_aarch64" in PLATFORMS
    minors = [int(tag.split("_")[2]) for tag in PLATFORMS[:-1]]
    assert minors == list(range(36, 16, -1))
    args = platform_args()
    assert args[:5] == ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp"]
    assert args.count("--platform") == len(PLATFORMS)


def test_device_requirements_have_no_extras_and_the_test_tools() -> None:
    names = [req.split("==")[0].split(">")[0].split(";")[0] for req in device_requirements(ROOT)]
    assert "tensorflow" not in names and "scikit-learn" not in names
    assert {"ai-edge-litert", "numpy", "pytest", "hypothesis"} <= set(names)


def test_a_failed_build_leaves_nothing_that_looks_cached(tmp_path: Path) -> None:
    def broken(out: Path) -> None:
        (out / "half").write_text("x")
        raise StepError("boom")

    with pytest.raises(StepError):
        cached_dir(tmp_path, "thing", "k1", broken)
    assert not (tmp_path / "thing-k1").exists()
    made, hit = cached_dir(tmp_path, "thing", "k1", lambda out: (out / "ok").write_text("y"))
    assert (made, hit) == (tmp_path / "thing-k1", False) and (made / "ok").exists()
    assert cached_dir(tmp_path, "thing", "k1", broken) == (made, True)
    cached_dir(tmp_path, "thing", "k2", lambda out: None)
    assert not made.exists()  # an older key is removed


def test_report_names_the_failed_step() -> None:
    out = io.StringIO()
    report = StepReport(out=out)
    with report.step("first") as note:
        note("fine")
    with pytest.raises(StepError), report.step("second"):
        raise StepError("what went wrong")
    assert report.failures == ["second: what went wrong"]
    assert "pi-check: FAILED second (" in out.getvalue() and "): what went wrong" in out.getvalue()
    assert report.summary(1.0).splitlines()[-1] == "FAILED  second: what went wrong"


def test_the_device_unit_tests_are_dealt_to_the_cpus_once_each(tmp_path: Path) -> None:
    for name in ("agent/test_a.py", "agent/test_b.py", "model/test_c.py", "test_d.py", "bench/test_e.py",
                 "tools/test_f.py", "agent/helpers.py"):
        (tmp_path / "tests" / "unit" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "tests" / "unit" / name).write_text("")
    shares = unit_test_shares(tmp_path, 2)
    assert shares == [["tests/unit/agent/test_a.py", "tests/unit/model/test_c.py"],
                      ["tests/unit/agent/test_b.py", "tests/unit/test_d.py"]]
    assert unit_test_shares(tmp_path, 1) == [sorted(shares[0] + shares[1])]


def test_the_files_are_dealt_by_their_measured_time() -> None:
    files = ["a.py", "b.py", "c.py", "d.py", "e.py"]
    shares = deal(files, 2, {"a.py": 100.0, "b.py": 60.0, "c.py": 50.0, "d.py": 1.0})
    # longest first to the lighter share; e is unmeasured and weighs the median, 55:
    # a 100 | b 60 | e 55 -> 115 | c 50 -> 150 | d 1 -> 116
    assert shares == [["a.py", "c.py"], ["b.py", "d.py", "e.py"]]
    assert sorted(shares[0] + shares[1]) == files
    assert deal(files, 2, {}) == [["a.py", "c.py", "e.py"], ["b.py", "d.py"]]  # no figures: round-robin
    assert deal(files, 1, {"a.py": 3.0}) == [files]


def test_the_committed_durations_split_the_device_tests_evenly() -> None:
    durations = load_durations()
    shares = unit_test_shares(ROOT, 2, durations)
    seconds = [sum(durations.get(f, 0.0) for f in share) for share in shares]
    assert sorted(shares[0] + shares[1]) == unit_test_shares(ROOT, 1)[0]
    assert max(seconds) <= 1.2 * min(seconds), seconds


def test_junit_times_are_summed_per_file() -> None:
    xml = """<testsuites><testsuite>
      <testcase classname="tests.unit.remote.test_ota" name="test_a" time="1.5"/>
      <testcase classname="tests.unit.remote.test_ota" name="test_b" time="2.0"/>
      <testcase classname="tests.unit.test_config.TestBroker" name="test_c" time="0.25"/>
      <testcase classname="tests.unit.conftest" name="weird" time="9"/>
      <testcase classname="tests.unit.test_skip" name="test_d"/>
    </testsuite></testsuites>"""
    assert junit_durations(xml) == {"tests/unit/remote/test_ota.py": 3.5, "tests/unit/test_config.py": 0.25,
                                    "tests/unit/test_skip.py": 0.0}


def test_durations_are_stored_atomically_and_checked_when_read(tmp_path: Path) -> None:
    path = tmp_path / "unit_durations.json"
    assert load_durations(path) == {}
    store_durations({"b.py": 2.04, "a.py": 1}, path)
    assert load_durations(path) == {"a.py": 1.0, "b.py": 2.0}
    assert [p.name for p in tmp_path.iterdir()] == ["unit_durations.json"]
    for bad in ("{", "[1]", '{"a.py": -1}', '{"a.py": "1"}', '{"a.py": true}'):
        path.write_text(bad)
        with pytest.raises(StepError, match=r"unit_durations\.json"):
            load_durations(path)
