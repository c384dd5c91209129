"""The TensorFlow child process as the converter drives it (the child itself is :mod:`converter.worker`).

TensorFlow never runs in the converter's own process: a crash, a hang or its memory stay in the
child. The child answers in JSON step files; an error step becomes one clear exception here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from converter.errors import ConvertError, ModelLoadError, QuantizationError

WORKER_TIMEOUT_S = 1800.0


class WorkerProcess:
    """The TensorFlow child process (see :mod:`converter.worker`)."""

    def __init__(self, workdir: Path, timeout_s: float = WORKER_TIMEOUT_S,
                 module: str = "converter.worker") -> None:
        self.workdir = workdir
        self.timed_out = False
        self._log_path = workdir / "worker.log"
        self._log: IO[bytes] = self._log_path.open("wb")
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, str(workdir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            text=True, env=env,
        )
        # A hung converter must not hang the user's shell or CI forever.
        self._timer = threading.Timer(timeout_s, self._kill_on_timeout)
        self._timer.daemon = True
        self._timer.start()

    def _kill_on_timeout(self) -> None:
        self.timed_out = True
        self.proc.kill()

    def wait_for(self, mark: str, on_start: Callable[[str], None] | None = None) -> None:
        """Read the child's stdout up to ``mark``; ``@@start STEP`` lines go to ``on_start``."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip() == mark:
                return
            if on_start is not None and line.startswith("@@start "):
                on_start(line[len("@@start "):].strip()[:40])
        code = self.proc.wait()
        if self.timed_out:
            raise ConvertError(f"the TensorFlow conversion took longer than {WORKER_TIMEOUT_S:.0f} s and "
                               "was stopped; try fewer --calibration-samples")
        raise ConvertError(f"the TensorFlow conversion process died (exit code {code}); "
                           f"last log lines: {self.log_tail()}")

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self._log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        useful = [t for t in text if t.strip() and "cuda" not in t.lower()]
        return " | ".join(useful[-lines:]) or "(no log)"

    def close(self) -> None:
        self._timer.cancel()
        if self.proc.poll() is None:
            self.send("quit")
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._log.close()


def read_step(workdir: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((workdir / name).read_text())
    return data


def raise_step_error(step: dict[str, Any], model: Path) -> None:
    kind, message, failed = step.get("kind"), str(step.get("error")), list(step.get("ops", []))
    if kind == "model":
        raise ModelLoadError(message if str(model) in message else f"{model}: {message}")
    if kind == "unsupported":
        raise QuantizationError(f"{model}: {message}; replace them with TFLite builtin ops in the "
                                "model (see the TFLite op compatibility guide) and convert again")
    if kind == "quantize":
        names = ", ".join(failed) if failed else "see the message"
        raise QuantizationError(
            f"ops cannot be fully quantised to int8 ({names}): {message}; to keep them in float, "
            "run without --strict (int8 with float fallback) or with --io float32"
        )
    if kind in ("setup", "input_shape", "train"):
        raise ConvertError(message)
    raise ConvertError(f"conversion failed: {message}")
