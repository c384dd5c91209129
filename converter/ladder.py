"""The recovery ladder: what the converter tries when plain int8 misses the accuracy targets.

When the int8 model loses more than ``--max-accuracy-drop`` points against the float model, or its
top-1 agreement with the float model is below ``--min-agreement``, :func:`run_ladder` tries, in
order, and stops at the first attempt that meets the targets:

1. better calibration: every calibration sample (when ``--calibration-samples`` capped them), then
   cross-layer equalisation (:mod:`converter.train.equalize`: a channel whose weights span far more
   than the others' is scaled down and the next layer's matching weights up, the same float
   function, no cost in size or latency; Keras models only), then activation ranges narrowed to
   the 99.99th and 99.9th percentile of the calibration values instead of their min/max (weights
   are already per-channel: TFLite's default for convolutions and fully connected layers);
2. selective quantisation: TensorFlow's ``QuantizationDebugger`` compares every int8 op with its
   float twin; the activation tensors are ranked by the mean per-channel relative RMS error their
   op adds to what its inputs had, and the worst 1, 2, 4, ... are kept in float (the op producing
   the tensor and the ops reading it), at most half of them;
3. quantisation-aware training (:mod:`converter.train.qat`, cross-layer equalisation first), when
   ``--train-data`` was given with a Keras model.

Every attempt is measured like the plain model (accuracy and agreement against the original float
model on the validation data, size, latency on this host) and listed in ``report["ladder"]``. The
TensorFlow work runs in :mod:`converter.ladder_worker` (a child process); nothing here imports
TensorFlow.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converter import compress, validate, worker
from converter.child import WorkerProcess, raise_step_error, read_step
from converter.errors import ConvertError
from converter.ops import float_compute_ops, float_ops, list_ops

if TYPE_CHECKING:
    from converter.convert import ConvertOptions, _Converted

PERCENTILES = (99.99, 99.9)
MAX_SELECTIVE_ATTEMPTS = 6  # 1, 2, 4, ... 32 tensors kept in float
LATENCY_RUNS = 20
QAT_MODULE = "converter.train.qat"


@dataclass
class LadderOutcome:
    """The model of the first attempt that met the targets (None if none did) and the report section."""

    model: bytes | None
    report: dict[str, Any]


def misses(report: dict[str, Any], max_accuracy_drop: float, min_agreement: float | None) -> list[str]:
    """The targets a report misses, in words (empty when it meets them all)."""
    out: list[str] = []
    drop = report.get("accuracy_drop_pp")
    if drop is not None and drop > max_accuracy_drop:
        out.append(f"accuracy drop {drop:.2f} pp > --max-accuracy-drop {max_accuracy_drop:g}")
    agreement = report.get("top1_agreement")
    if min_agreement is not None and agreement is not None and agreement < min_agreement:
        out.append(f"top-1 agreement {agreement:.2%} < --min-agreement {min_agreement:g}")
    return out


def _note(message: str) -> None:
    print(f"edge-convert: ladder: {message}", file=sys.stderr, flush=True)


class _Child:
    """The ladder's TensorFlow child: one job file and one ``@@name`` line per request."""

    def __init__(self, workdir: Path, model: Path, fmt: str, input_shape: list[int] | None) -> None:
        self.workdir = workdir
        self.model = model
        self.count = 0
        (workdir / worker.JOB1).write_text(json.dumps({"model": str(model.resolve()), "format": fmt,
                                                       "input_shape": input_shape}))
        self.proc = WorkerProcess(workdir, module="converter.ladder_worker")
        self.proc.wait_for(worker.MARK1)
        step1 = read_step(workdir, worker.STEP1)
        if "error" in step1:
            self.proc.close()
            raise_step_error(step1, model)

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        self.count += 1
        name = f"job-{self.count}"
        (self.workdir / f"{name}.json").write_text(json.dumps(job))
        self.proc.send(name)
        self.proc.wait_for(f"@@{name}")
        return read_step(self.workdir, f"{name}.result.json")

    def close(self) -> None:
        self.proc.close()


class _Ladder:
    def __init__(self, opts: ConvertOptions, fmt: str, conv: _Converted, base: dict[str, Any], child: _Child,
                 workdir: Path) -> None:
        self.opts, self.fmt, self.conv, self.base, self.child, self.workdir = opts, fmt, conv, base, child, workdir
        self.attempts: list[dict[str, Any]] = []
        self.winner: bytes | None = None
        self.base_latency = _latency(conv.int8_model, conv.validation.x)
        self.sensitivity: list[dict[str, Any]] = []
        self.pool = workdir / "pool.npy"

    def measure(self, rung: int, what: str, model: bytes, extra: dict[str, Any]) -> bool:
        """Validate one candidate like the plain model; record it; True when it meets the targets."""
        valid = self.conv.validation
        comp = validate.compare(self.conv.float_model, model, valid.x)
        acc_f = acc_q = None
        if valid.y is not None:
            acc_f = validate.accuracy(comp.float_outputs, valid.y)
            acc_q = validate.accuracy(comp.int8_outputs, valid.y)
        latency = _latency(model, valid.x)
        op_list = list_ops(model, float_io=self.opts.io == "float32")
        figures: dict[str, Any] = {
            "top1_agreement": round(validate.top1_agreement(comp.float_outputs, comp.int8_outputs), 6),
            "accuracy_int8": None if acc_q is None else round(acc_q, 6),
            "accuracy_drop_pp": None if acc_f is None or acc_q is None else round(100.0 * (acc_f - acc_q), 4),
            "output_cosine": round(validate.mean_cosine(comp.float_outputs, comp.int8_outputs), 6),
        }
        missed = misses(figures, self.opts.max_accuracy_drop, self.opts.min_agreement)
        attempt = {
            "rung": rung, "what": what, "status": "met" if not missed else "missed", "missed": missed,
            **figures,
            "size_bytes": len(model), "size_vs_int8_bytes": len(model) - int(self.base["size_int8_bytes"]),
            "latency_ms_1thr": latency, "latency_vs_int8_ms": round(latency - self.base_latency, 4),
            "float_ops": float_compute_ops(op_list) or float_ops(op_list), **extra,
        }
        self.attempts.append(attempt)
        _note(f"rung {rung} {what}: agreement {figures['top1_agreement']:.2%}, accuracy "
              f"{'n/a' if acc_q is None else f'{acc_q:.2%}'}, {len(model):,} B -> {attempt['status']}")
        if not missed:
            self.winner = model
        return not missed

    def skip(self, rung: int, what: str, reason: str) -> None:
        self.attempts.append({"rung": rung, "what": what, "status": "skipped", "reason": reason})
        _note(f"rung {rung} {what}: skipped ({reason})")

    def quantize(self, rung: int, what: str, job: dict[str, Any], extra: dict[str, Any]) -> bool:
        out = self.workdir / f"attempt-{len(self.attempts) + 1}.tflite"
        result = self.child.run({"kind": "quantize", "io": self.opts.io, "out": str(out), **job})
        if result.get("equalized"):
            extra = {**extra, "equalized": result["equalized"]}
        if "error" in result:
            self.attempts.append({"rung": rung, "what": what, "status": "failed", "reason": result["error"]})
            _note(f"rung {rung} {what}: failed ({result['error']})")
            return False
        if "ranges_narrowed" in result:
            extra = {**extra, "ranges_narrowed": result["ranges_narrowed"]}
        return self.measure(rung, what, out.read_bytes(), extra)

    # ------------------------------------------------------------------ rungs

    def calibration(self, pool: Path, pool_size: int) -> bool:
        used = len(self.conv.calibration)
        if pool_size > used:
            if self.quantize(1, f"calibration: all {pool_size} samples (was {used})",
                             {"calibration": str(pool)}, {"calibration_samples": pool_size}):
                return True
        else:
            self.skip(1, "calibration: more samples", f"all {used} samples were already used")
        self.skip(1, "calibration: per-channel weights",
                  "weights are already per-channel (TFLite's default for CONV_2D, DEPTHWISE_CONV_2D "
                  "and FULLY_CONNECTED); activations are per-tensor in TFLite int8")
        if self.equalization(pool):
            return True
        for pct in PERCENTILES:
            if self.quantize(1, f"calibration: activation ranges at the {pct:g}th percentile",
                             {"calibration": str(pool), "percentile": pct},
                             {"calibration_samples": pool_size, "percentile": pct}):
                return True
        return False

    def equalization(self, pool: Path) -> bool:
        what = "calibration: cross-layer equalisation"
        if self.fmt == "savedmodel":
            self.skip(1, what, "needs the Keras model (.keras or .h5), not a SavedModel")
            return False
        if self.opts.input_shape is not None:
            self.skip(1, what, "not with --input-shape (the Keras model has dynamic input dimensions)")
            return False
        out = self.workdir / f"attempt-{len(self.attempts) + 1}.tflite"
        result = self.child.run({"kind": "equalize", "model": str(Path(self.opts.model).resolve()),
                                 "calibration": str(pool), "io": self.opts.io, "out": str(out)})
        if "error" in result:
            self.attempts.append({"rung": 1, "what": what, "status": "failed", "reason": result["error"]})
            _note(f"rung 1 {what}: failed ({result['error']})")
            return False
        if not result["pairs"]:
            self.skip(1, what, "no Conv2D/Dense pair with a ReLU or linear activation between them in a chain")
            return False
        return self.measure(1, what, out.read_bytes(), {"equalized": result["pairs"]})

    def selective(self, pool: Path) -> bool:
        if self.opts.strict:
            self.skip(2, "selective quantisation", "--strict forbids ops in float")
            return False
        if self.opts.io == "uint8":
            self.skip(2, "selective quantisation", "needs --io int8 or float32")
            return False
        _note("ranking the layers: float vs int8 activations, op by op (QuantizationDebugger)")
        result = self.child.run({"kind": "rank", "calibration": str(pool)})
        if "error" in result:
            self.attempts.append({"rung": 2, "what": "selective quantisation: ranking",
                                  "status": "failed", "reason": result["error"]})
            return False
        ranked: list[dict[str, Any]] = result["ranked"]
        self.sensitivity = [{"tensor": r["tensor"], "op": r["op"], "relative_rmse": r["score"],
                             "added_relative_rmse": r["added"]} for r in ranked]
        limit = max(1, (len(ranked) + 1) // 2)
        count = 1
        for _ in range(MAX_SELECTIVE_ATTEMPTS):
            if count > limit:
                break
            chosen = ranked[:count]
            keep = list(dict.fromkeys(n for r in chosen for n in r["keep_float"]))
            ops = list(dict.fromkeys(o for r in chosen for o in r["ops"]))
            what = f"selective: {count} most sensitive activation tensor(s) kept in float ({len(keep)} ops)"
            if self.quantize(2, what, {"calibration": str(pool), "keep_float": keep},
                             {"kept_float_tensors": [r["tensor"] for r in chosen],
                              "kept_float_ops": ops}):
                return True
            count *= 2
        return False

    def qat(self) -> bool:
        what = "quantisation-aware training"
        train_data = self.opts.compress.train_data
        if train_data is None:
            self.skip(3, what, "no training data (--train-data DIR, labelled)")
            return False
        if self.fmt == "savedmodel":
            self.skip(3, what, "needs the Keras model (.keras or .h5); Keras 3 cannot train a SavedModel")
            return False
        if not _has_module(QAT_MODULE):
            self.skip(3, what, f"{QAT_MODULE} is not installed")
            return False
        _note(f"preprocessing training data {train_data} and fine-tuning with fake quantisation")
        input_shape = [1, *(int(d) for d in self.conv.calibration.x.shape[1:])]
        try:
            train = compress.train_job(self.opts.compress, "qat", Path(self.opts.model), self.conv.spec,
                                       input_shape, self.conv.label_names, self.workdir)
        except ConvertError as exc:
            self.attempts.append({"rung": 3, "what": what, "status": "failed", "reason": str(exc)})
            _note(f"rung 3 {what}: failed ({exc})")
            return False
        epochs = int(train["epochs"])
        return self.quantize(3, f"{what} ({epochs} epoch{'' if epochs == 1 else 's'}, {train['samples']} samples)",
                             {"kind": "qat", "train": train, "calibration": str(self.pool)},
                             {"epochs": train["epochs"], "train_samples": train["samples"]})


def _latency(model: bytes, x: np.ndarray) -> float:
    """ms per inference, 1 thread: the best of three short runs (a busy host only ever adds time)."""
    return min(validate.measure_latency(model, x, threads=(1,), runs=LATENCY_RUNS)["1"] for _ in range(3))


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def run_ladder(opts: ConvertOptions, fmt: str, conv: _Converted, base: dict[str, Any],
               pool: np.ndarray) -> LadderOutcome:
    """Try the rungs in order (see the module doc); ``pool`` is every calibration sample available."""
    missed = misses(base, opts.max_accuracy_drop, opts.min_agreement)
    _note(f"plain int8 missed the targets ({'; '.join(missed)}); trying the recovery ladder")
    with tempfile.TemporaryDirectory(prefix="edge-convert-ladder-") as tmp:
        workdir = Path(tmp)
        np.save(workdir / "pool.npy", pool.astype(np.float32, copy=False))
        _note("loading the model in the ladder's TensorFlow child process")
        child = _Child(workdir, Path(opts.model), fmt, opts.input_shape)
        ladder = _Ladder(opts, fmt, conv, base, child, workdir)
        try:
            pool_path = workdir / "pool.npy"
            ladder.pool = pool_path
            done = ladder.calibration(pool_path, len(pool)) or ladder.selective(pool_path) or ladder.qat()
        finally:
            child.close()
    winner = next((a for a in ladder.attempts if a["status"] == "met"), None)
    report: dict[str, Any] = {
        "plain_int8": {k: base.get(k) for k in (
            "top1_agreement", "accuracy_int8", "accuracy_drop_pp", "size_int8_bytes")}
        | {"latency_ms_1thr": ladder.base_latency, "missed": missed},
        "targets": {"max_accuracy_drop_pp": opts.max_accuracy_drop, "min_agreement": opts.min_agreement},
        "attempts": ladder.attempts,
        "recovered": done,
        "chosen": None if winner is None else {
            "rung": winner["rung"], "what": winner["what"],
            "kept_float_ops": winner.get("kept_float_ops", []),
            "equalized": winner.get("equalized", []),
            "size_vs_int8_bytes": winner["size_vs_int8_bytes"],
            "latency_vs_int8_ms": winner["latency_vs_int8_ms"]},
        "sensitivity": ladder.sensitivity[:10],
    }
    return LadderOutcome(model=ladder.winner, report=report)


def measured(ladder: dict[str, Any]) -> int:
    """How many candidate models the ladder built and measured."""
    return sum(1 for a in ladder["attempts"] if a["status"] in ("met", "missed"))


def format_ladder(ladder: dict[str, Any]) -> str:
    """The ladder's attempts as plain-text lines (printed below the report table)."""
    lines = ["recovery ladder (plain int8 missed: " + "; ".join(ladder["plain_int8"]["missed"]) + ")"]
    for a in ladder["attempts"]:
        if a["status"] in ("skipped", "failed"):
            lines.append(f"  rung {a['rung']} {a['what']}: {a['status']} ({a['reason']})")
            continue
        acc = "n/a" if a["accuracy_int8"] is None else f"{100 * a['accuracy_int8']:.2f} %"
        lines.append(f"  rung {a['rung']} {a['what']}: agreement {100 * a['top1_agreement']:.2f} %, "
                     f"accuracy {acc}, {a['size_bytes']:,} B ({a['size_vs_int8_bytes']:+,} B), "
                     f"{a['latency_ms_1thr']:.3f} ms ({a['latency_vs_int8_ms']:+.3f} ms) -> {a['status']}")
    chosen = ladder.get("chosen")
    if chosen is None:
        lines.append("  no rung met the targets")
    else:
        wide = ", ".join(chosen["kept_float_ops"]) or "none"
        pairs = ", ".join(f"{p['first']} -> {p['second']}" for p in chosen.get("equalized") or [])
        lines.append(f"  chosen: rung {chosen['rung']} ({chosen['what']}); ops kept in float: {wide}; "
                     + (f"equalised: {pairs}; " if pairs else "") +
                     f"cost vs plain int8: {chosen['size_vs_int8_bytes']:+,} B, "
                     f"{chosen['latency_vs_int8_ms']:+.3f} ms per inference (1 thread, this host)")
    return "\n".join(lines)
