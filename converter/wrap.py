"""``edge-convert wrap``: an existing ``.tflite`` plus its sidecar -> a verified bundle.

Third-party models (already quantised, or float) get the same bundle as converted
ones, so install, OTA and deploy treat them alike. No TensorFlow: the manifest
comes from the sidecar and the interpreter, the golden vectors from this model
run here on inputs the device's own task code prepared.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

import edge_agent
from converter import validate
from converter.convert import default_model_name
from converter.data import AUDIO_SUFFIXES, IMAGE_SUFFIXES, data_kind
from converter.errors import ConvertError, DataError
from converter.golden import golden_tolerance
from converter.output import check_output_writable, write_verified
from converter.report import report_json
from edge_agent.errors import PreprocessError, RuntimeLoadError
from edge_agent.model.bundle import LABELS, REPORT
from edge_agent.model.keys import load_private_key
from edge_agent.model.loader import read_sidecar, sidecar_manifest
from edge_agent.model.manifest import GoldenVector, ImagePreprocess, Manifest, TensorSpec
from edge_agent.model.tflite.sidecar import metadata_sidecar
from edge_agent.preprocess import dequantize, read_wav, resample
from edge_agent.runtimes import Runtime, create_runtime
from edge_agent.runtimes.litert import backend_version
from edge_agent.schema import ValidationError
from edge_agent.sources.base import AudioWindow, Frame, Item
from edge_agent.tasks import Task, create_task
from edge_agent.util.fs import sha256_bytes

# Inputs tried per golden vector wanted: the clearest top-1 margins are kept (see pick_golden).
CANDIDATES_PER_VECTOR = 8
MAX_GOLDEN = 32
TFLITE_IDENTIFIER = b"TFL3"


@dataclass
class WrapOptions:
    """Everything ``edge-convert wrap`` accepts (see ``edge-convert wrap --help``)."""

    model: Path
    sidecar: Path | None  # None: the model's own TFLite metadata
    output: Path
    calibration: Path | None = None
    sign_key: Path | None = None
    name: str | None = None
    version: str | None = None
    golden: int = 4
    seed: int = 0
    latency_budget_ms: float | None = None


@dataclass
class WrapResult:
    """What a successful wrap produced."""

    output: Path
    manifest: Manifest
    report: dict[str, Any]
    smoke_summary: str


def wrap(opts: WrapOptions) -> WrapResult:
    """Bundle ``opts.model`` with its sidecar, golden vectors and a report; verify and write it.

    Cheap checks (output path, key, model file, sidecar, calibration folder) come
    first; the bundle is written next to the output, read back, smoke-tested and
    only then renamed into place, so a failure leaves no file behind.

    Raises:
        ConvertError: bad model, sidecar, calibration data, options or output path.
        EdgeError: a key or sidecar the agent's own readers refuse.
    """
    started = time.perf_counter()
    if not 1 <= opts.golden <= MAX_GOLDEN:
        raise ConvertError(f"--golden takes 1 to {MAX_GOLDEN} vectors, got {opts.golden}")
    output = Path(opts.output)
    check_output_writable(output)
    sign_key = load_private_key(Path(opts.sign_key)) if opts.sign_key is not None else None
    model_bytes = _read_model(Path(opts.model))
    sidecar = read_sidecar(Path(opts.sidecar)) if opts.sidecar is not None else None
    kind = data_kind(Path(opts.calibration)) if opts.calibration is not None else None
    if kind == "array":
        raise DataError(f"--calibration {opts.calibration}: wrap takes a folder of images or WAV files "
                        "(optionally in class subfolders), not an array file")

    runtime = _open_runtime(model_bytes, Path(opts.model))
    try:
        if sidecar is None:
            sidecar = metadata_sidecar(model_bytes, runtime.inputs, runtime.outputs, str(opts.model))
            if sidecar is None:
                raise ConvertError(f"{opts.model} carries no TFLite metadata: give --sidecar FILE.toml (start one "
                                   f"with `edge-agent inspect {opts.model} --write-sidecar FILE.toml`)")
        manifest = _manifest(sidecar, model_bytes, runtime, opts)
        task = _fitting_task(manifest, runtime, opts)
        if opts.calibration is not None:
            if kind != manifest.preprocess.kind:
                raise DataError(f"calibration data {opts.calibration} holds {kind} files but the model takes "
                                f"{manifest.preprocess.kind} input; give a folder of "
                                f"{'images' if manifest.preprocess.kind == 'image' else 'WAV files'}")
            items = _calibration_items(Path(opts.calibration), manifest, opts.golden * CANDIDATES_PER_VECTOR)
            source = f"calibration data {opts.calibration}"
        else:
            items = _random_items(manifest, opts.golden * CANDIDATES_PER_VECTOR, opts.seed)
            source = f"random inputs (seed {opts.seed})"
        golden = _golden_vectors(task, runtime, manifest, items, opts.golden)
        latency = _measure_latency(model_bytes, golden[0].input_array(manifest.inputs[0]))
    finally:
        runtime.close()

    # Generous, like the converter's: the budget must hold on a Pi-class board, not only here.
    budget = opts.latency_budget_ms if opts.latency_budget_ms is not None else round(20.0 * latency["1"] + 5.0, 2)
    report: dict[str, Any] = {
        "wrapped": True,
        "model": str(opts.model),
        "source_model_sha256": sha256_bytes(model_bytes),
        "size_bytes": len(model_bytes),
        "sidecar": str(opts.sidecar) if opts.sidecar is not None else "TFLite metadata",
        "task": manifest.task,
        "golden_vectors": len(golden),
        "golden_source": source,
        "golden_atol": golden[0].tolerances,
        "latency_ms": latency,
        "latency_budget_ms": budget,
        "io": {"inputs": [_io_dict(s) for s in manifest.inputs], "outputs": [_io_dict(s) for s in manifest.outputs]},
        "preprocess": manifest.preprocess.model_dump(mode="json"),
        "versions": {"edge_infer": edge_agent.__version__, "litert": backend_version(),
                     "python": sys.version.split()[0]},
        "created_utc": manifest.created_utc,
        "duration_s": 0.0,
    }
    manifest = manifest.model_copy(update={
        "golden": golden,
        "latency_budget_ms": budget,
        "converter": {"edge_infer": edge_agent.__version__, "litert": report["versions"]["litert"],
                      "tool": "edge-convert wrap"},
        "validation": {"wrapped": True, "golden_vectors": len(golden), "latency_ms": latency["1"]},
    })
    report["duration_s"] = round(time.perf_counter() - started, 2)
    files = {REPORT: report_json(report)}
    if manifest.output.labels:
        files[LABELS] = ("\n".join(manifest.output.labels) + "\n").encode()
    written, smoke = write_verified(output, manifest, model_bytes, files, sign_key)
    return WrapResult(output=output, manifest=written, report=report, smoke_summary=smoke)


# --------------------------------------------------------------------------- model and manifest


def _read_model(path: Path) -> bytes:
    if path.is_dir():
        raise ConvertError(f"model {path} is a directory; wrap takes a .tflite file "
                           "(convert a SavedModel with `edge-convert MODEL --calibration DATA -o BUNDLE`)")
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConvertError(f"model {path} not found") from exc
    except OSError as exc:
        raise ConvertError(f"cannot read model {path}: {exc.strerror or exc}") from exc
    if data[:2] == b"PK":
        raise ConvertError(f"{path} is a zip archive (a bundle?), not a .tflite model; "
                           "a bundle can be re-signed with `edge-deploy sign`")
    # A TFLite flatbuffer carries its file identifier at bytes 4..8; checking it first keeps the
    # interpreter's own error output (several native lines) away from the user.
    if data[4:8] != TFLITE_IDENTIFIER:
        raise ConvertError(f"{path} is not a TFLite model (no TFL3 flatbuffer identifier); wrap takes "
                           "a .tflite file")
    return data


def _open_runtime(model_bytes: bytes, path: Path) -> Runtime:
    try:
        return create_runtime("litert", model_bytes)
    except RuntimeLoadError as exc:
        raise ConvertError(f"{path}: {exc}") from exc
    except ValidationError as exc:  # a tensor type the manifest cannot describe (e.g. int64, bool)
        raise ConvertError(f"{path}: model tensor {exc.where('tensor')}: {exc.first['msg']}; "
                           "wrap needs int8, uint8, int16, int32 or float32 tensors") from exc


def _manifest(sidecar: dict[str, Any], model_bytes: bytes, runtime: Runtime, opts: WrapOptions) -> Manifest:
    """The sidecar's manifest with the interpreter's tensor specs, options applied, layout set."""
    where = Path(opts.sidecar) if opts.sidecar is not None else Path(opts.model)
    manifest = sidecar_manifest(sidecar, model_bytes, runtime.inputs, runtime.outputs, where,
                                default_model_name(Path(opts.model)),
                                None if opts.sidecar is not None else f"{opts.model} (TFLite metadata)")
    data = manifest.model_dump()
    for option, value in (("name", opts.name), ("version", opts.version)):
        if value is not None:
            data[option] = value
    layout = "NTF" if manifest.task == "audio_classify" else "NHWC"
    data["inputs"][0]["layout"] = layout
    data["created_utc"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ConvertError(f"--{exc.where('name')}: {exc.first['msg']}") from exc


def _fitting_task(manifest: Manifest, runtime: Runtime, opts: WrapOptions) -> Task:
    """The device's task for this manifest; refuses a sidecar that does not fit the model."""
    try:
        return create_task(manifest, list(manifest.output.labels), runtime.inputs, runtime.outputs)
    except (ValueError, TypeError) as exc:
        raise ConvertError(f"sidecar {opts.sidecar} does not fit {opts.model}: {exc}") from exc


def _io_dict(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "shape": spec.shape, "dtype": spec.dtype, "scale": spec.scale,
            "zero_point": spec.zero_point}


# --------------------------------------------------------------------------- golden inputs


def _calibration_items(folder: Path, manifest: Manifest, count: int) -> list[Item]:
    """Up to ``count`` samples spread evenly over the folder (class subfolders included), read
    the way the device's sources read them."""
    files = _sample_files(folder, IMAGE_SUFFIXES if manifest.preprocess.kind == "image" else AUDIO_SUFFIXES)
    picked = np.unique(np.linspace(0, len(files) - 1, min(count, len(files))).round().astype(int))
    items: list[Item] = []
    for index, i in enumerate(picked):
        file = files[int(i)]
        if isinstance(manifest.preprocess, ImagePreprocess):
            # As the folder source reads a frame: 8-bit BGR, whatever the file's own depth.
            image = cv2.imread(str(file), cv2.IMREAD_COLOR)
            if image is None:
                raise DataError(f"cannot read image {file}; is it a valid png/jpg/bmp?")
            items.append(Frame(index=index, ts=0.0, image=image, capture_s=0.0))
        else:
            try:
                samples, rate = read_wav(file)
            except PreprocessError as exc:
                raise DataError(str(exc)) from exc
            samples = resample(samples, rate, manifest.preprocess.sample_rate)
            items.append(AudioWindow(index=index, ts=0.0, t_start_s=0.0, samples=samples, capture_s=0.0))
    return items


def _sample_files(folder: Path, suffixes: frozenset[str]) -> list[Path]:
    """Data files directly in ``folder`` and in its (non-hidden) subfolders, sorted."""
    files: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and entry.suffix.lower() in suffixes:
            files.append(entry)
        elif entry.is_dir() and not entry.name.startswith("."):
            files.extend(sub for sub in sorted(entry.rglob("*")) if sub.is_file() and sub.suffix.lower() in suffixes)
    if not files:
        raise DataError(f"calibration folder {folder} has no usable files")
    return files


def _random_items(manifest: Manifest, count: int, seed: int) -> list[Item]:
    """Seeded random raw inputs: smooth noise images of random coarseness, or tone plus noise.

    Raw samples (not tensors) go through the device's preprocessing like real data, so the
    tensors lie in the range the model really sees; coarse noise varies the class scores far
    more than pixel noise does, which gives golden vectors with clear top-1 margins.
    """
    rng = np.random.default_rng(seed)
    pre = manifest.preprocess
    items: list[Item] = []
    for index in range(count):
        if isinstance(pre, ImagePreprocess):
            cells = int(rng.choice([1, 2, 4, 8]))
            coarse = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
            image = cv2.resize(coarse, (pre.width, pre.height), interpolation=cv2.INTER_LINEAR)
            items.append(Frame(index=index, ts=0.0, image=image, capture_s=0.0))
        else:
            t = np.arange(pre.window_samples, dtype=np.float32) / np.float32(pre.sample_rate)
            tone = np.sin(2.0 * np.pi * rng.uniform(100.0, 0.4 * pre.sample_rate) * t)
            noise = rng.normal(0.0, 1.0, pre.window_samples)
            samples = (rng.uniform(0.0, 0.5) * tone + rng.uniform(0.0, 0.2) * noise).astype(np.float32)
            items.append(AudioWindow(index=index, ts=0.0, t_start_s=0.0, samples=np.clip(samples, -1.0, 1.0),
                                     capture_s=0.0))
    return items


# --------------------------------------------------------------------------- golden vectors


def _golden_vectors(task: Task, runtime: Runtime, manifest: Manifest, items: list[Item], count: int
                    ) -> list[GoldenVector]:
    """Run the candidates through the task's preparation and the model; keep ``count`` of them.

    Single-output classifiers keep the candidates with the clearest top-1 margin, spread over
    classes (the smoke test checks top-1 there); other models the first ``count``. Expected
    outputs are this model's own on this machine; tolerances follow :func:`golden_tolerance`.
    """
    tensors: list[np.ndarray] = []
    raw: list[list[np.ndarray]] = []
    for item in items:
        try:
            tensor, context = task.prepare(item)
        except (PreprocessError, ValueError) as exc:
            raise DataError(f"cannot prepare a golden input for this model: {exc}") from exc
        outputs = runtime.infer(tensor)
        if not raw:
            _check_decodes(task, outputs, item, context, manifest)
        tensors.append(tensor)
        raw.append(outputs)
    specs = runtime.outputs
    first = np.stack([dequantize(r[0], specs[0]).reshape(-1) for r in raw])
    if manifest.task in ("classify", "audio_classify") and len(specs) == 1:
        comparison = validate.Comparison(float_outputs=first, int8_outputs=first,
                                         int8_raw=np.stack([r[0] for r in raw]), int8_inputs=np.stack(tensors))
        chosen = validate.pick_golden(comparison, specs[0].scale, count)
    else:
        chosen = list(range(min(count, len(raw))))
    tolerances = [golden_tolerance(spec, np.stack([dequantize(raw[i][k], spec) for i in chosen]))
                  for k, spec in enumerate(specs)]
    return [
        GoldenVector(
            input_b64=GoldenVector.encode(tensors[i]),
            expected_b64=GoldenVector.encode(raw[i][0]),
            expected_top1=int(np.argmax(first[i])),
            atol=tolerances[0],
            more_expected_b64=[GoldenVector.encode(array) for array in raw[i][1:]],
            more_atol=tolerances[1:],
        )
        for i in chosen
    ]


def _check_decodes(task: Task, outputs: list[np.ndarray], item: Item, context: Any, manifest: Manifest) -> None:
    """Decode one result as the device will: the sidecar's output section must fit the model's outputs."""
    try:
        task.decode(outputs, item, context)
    except (ValueError, IndexError, TypeError, KeyError, StopIteration) as exc:
        shapes = ", ".join(f"{o.dtype}{list(o.shape)}" for o in outputs)
        raise ConvertError(f"the sidecar's output section (task {manifest.task}) cannot decode this model's "
                           f"outputs ({shapes}): {exc}") from exc


def _measure_latency(model_bytes: bytes, tensor: np.ndarray, threads: tuple[int, ...] = (1, 2),
                     runs: int = 50, max_s: float = 2.0) -> dict[str, float]:
    """Mean ms per inference on this machine per thread count (at most ``runs``, about ``max_s`` s each)."""
    result: dict[str, float] = {}
    for n in threads:
        runtime = create_runtime("litert", model_bytes, threads=n)
        try:
            for _ in range(3):
                runtime.infer(tensor)
            done, start = 0, time.perf_counter()
            while done < runs and (done < 5 or time.perf_counter() - start < max_s):
                runtime.infer(tensor)
                done += 1
            result[str(n)] = round((time.perf_counter() - start) * 1000.0 / done, 4)
        finally:
            runtime.close()
    return result
