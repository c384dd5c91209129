"""``make demo`` (``python -m converter.demo``): the converter's part of the demo.

Trains the digits CNN on real handwritten digits (scikit-learn), converts it to
an int8 bundle with the real ``edge-convert`` pipeline, prints the validation
report and inspects the bundle. TensorFlow runs only in child processes, so
later demo stages (agent, MQTT) can reuse this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from converter.cli import main as convert_main

DEMO_DIR = Path("demo-out")


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def train_digits(out: Path) -> dict[str, str]:
    """Train and save the digits model plus PNG train/test folders (child process)."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "converter.examples", "digits", "--out", str(out)],
        capture_output=True, text=True, env=env, check=False,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"demo: training failed (exit code {proc.returncode})")
    info: dict[str, str] = json.loads((out / "info.json").read_text())
    return info


def run_converter_demo(out: Path = DEMO_DIR) -> Path:
    """Train, convert and inspect; returns the bundle path (for later demo stages)."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    _banner("1/3 training a CNN on scikit-learn's handwritten digits (32x32 grey, raw 0..255 pixels)")
    info = train_digits(out / "digits")
    print(f"float Keras model: {info['models']['keras']} "  # type: ignore[index]
          f"(test accuracy {float(info['accuracy']):.2%})")
    bundle = out / "digits.bundle"
    _banner("2/3 edge-convert: full-integer int8 quantisation, validation, bundle")
    code = convert_main([
        str(info["models"]["keras"]),  # type: ignore[index]
        "--calibration", str(info["train"]), "--validation", str(info["test"]),
        "--output", str(bundle), "--name", "digits", "--version", "1.0.0",
        "--report", str(out / "digits.report.json"),
    ])
    if code != 0:
        raise SystemExit(f"demo: edge-convert failed with exit code {code}")
    _banner(f"3/3 edge-convert inspect {bundle}")
    if convert_main(["inspect", str(bundle)]) != 0:
        raise SystemExit("demo: the bundle did not verify")
    print(f"\nconverter demo done in {time.perf_counter() - started:.0f} s: {bundle}")
    return bundle


def main() -> int:
    run_converter_demo()
    return 0


if __name__ == "__main__":
    sys.exit(main())
