"""What a plain ``.tflite`` model is and how to run it (``edge-agent inspect``'s report).

The input and output tensors (as the interpreter reports them), the operators and
whether any still compute in float, the TFLite Model Metadata when there is some, the
output format the outputs look like, and a suggested sidecar (written by
:mod:`edge_agent.model.sidecar_toml`).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.errors import BundleError, RuntimeLoadError
from edge_agent.model.manifest import TensorSpec
from edge_agent.model.tflite.metadata import (
    AudioProperties,
    BoundingBoxProperties,
    ImageProperties,
    ModelMetadata,
    TensorMetadata,
    metadata_labels,
    model_metadata,
)
from edge_agent.model.tflite.model import MODEL_IDENTIFIER, OpSummary, TfliteModel, read_model, read_operators
from edge_agent.model.tflite.sidecar import image_normalization, metadata_sidecar
from edge_agent.schema import ValidationError
from edge_agent.util.fs import sha256_bytes

if TYPE_CHECKING:  # the tasks package imports OpenCV: only loaded when inspect runs
    from edge_agent.tasks.formats import OutputGuess



@dataclass(frozen=True)
class Sidecar:
    """A suggested sidecar: its fields, where they came from, and notes for the reader."""

    fields: dict[str, Any]
    source: str  # "metadata" | "shapes"
    notes: dict[str, list[str]] = field(default_factory=dict)  # section ("" = top) -> comment lines


@dataclass(frozen=True)
class Inspection:
    """Everything ``inspect`` reports about one ``.tflite`` file."""

    path: Path
    size_bytes: int
    sha256: str
    model: TfliteModel
    ops: OpSummary
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metadata: ModelMetadata | None
    metadata_error: str | None
    labels: list[str] | None
    labels_error: str | None
    guess: OutputGuess
    sidecar: Sidecar
    data: bytes = field(repr=False, default=b"")


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise BundleError(f"model {path} not found") from exc
    except IsADirectoryError as exc:
        raise BundleError(f"{path} is a directory; give a .tflite file") from exc
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if data[4:8] != MODEL_IDENTIFIER and data[:4] == b"PK\x03\x04":
        raise BundleError(f"{path} is a zip archive (a bundle?), not a .tflite; `edge-agent check --bundle "
                          f"{path}` verifies a bundle")
    return data


def _tensor_specs(data: bytes, what: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Tensor specs as the interpreter reports them (also proves the interpreter loads the file)."""
    from edge_agent.runtimes import create_runtime

    try:
        runtime = create_runtime("litert", data)
    except RuntimeLoadError as exc:  # the interpreter's messages span lines; the CLI shows one
        raise RuntimeLoadError(" ".join(str(exc).split())) from exc
    except ValidationError as exc:
        raise BundleError(f"{what}: a tensor has a dtype the agent does not support ({exc.first['msg']})") from exc
    try:
        return list(runtime.inputs), list(runtime.outputs)
    finally:
        runtime.close()


def inspect_model(path: Path) -> Inspection:
    """Read, parse and load a ``.tflite`` file and guess how to run it.

    Raises:
        BundleError: missing, unreadable or malformed file.
        RuntimeLoadError: the interpreter cannot load it.
    """
    from edge_agent.tasks.formats import recognise_outputs

    path = Path(path)
    data = _read(path)
    what = str(path)
    model = read_model(data, what)
    ops = read_operators(data, what)
    inputs, outputs = _tensor_specs(data, what)
    metadata, metadata_error = None, None
    labels, labels_error = None, None
    try:
        metadata = model_metadata(model, what)
    except BundleError as exc:
        metadata_error = str(exc)
    if metadata is not None:
        try:
            labels = metadata_labels(data, metadata, what)
        except BundleError as exc:
            labels_error = str(exc)
    guess = recognise_outputs(outputs, len(labels or ()))
    sidecar = suggest_sidecar(path, data, inputs, outputs, guess, metadata is not None)
    return Inspection(path, len(data), sha256_bytes(data), model, ops, inputs, outputs, metadata,
                      metadata_error, labels, labels_error, guess, sidecar, data)


# --------------------------------------------------------------------------- starting sidecar


def _name(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:128]
    return cleaned or "model"


def _quantised_range(spec: TensorSpec) -> tuple[float, float] | None:
    """The real-valued range an integer input tensor can hold, from its scale/zero-point."""
    limits = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}.get(spec.dtype)
    if limits is None or spec.scale <= 0:
        return None
    return (limits[0] - spec.zero_point) * spec.scale, (limits[1] - spec.zero_point) * spec.scale


def _image_preprocess(spec: TensorSpec) -> tuple[dict[str, Any], list[str]]:
    _, height, width, channels = spec.shape
    pre: dict[str, Any] = {"kind": "image", "width": width, "height": height, "channels": channels,
                           "color": "gray" if channels == 1 else "rgb"}
    notes = ["(pixel - mean) / std gives the model input; check mean/std against the training pipeline"]
    if spec.dtype == "uint8" and spec.scale > 0:
        pre["mean"], pre["std"] = image_normalization(spec)
        notes.append("uint8 input: raw pixels, as the TFLite Task Library feeds it")
        return pre, notes
    span = _quantised_range(spec)
    if span is None:
        notes.append("float input: its range cannot be read from the file; std = [255.0] for [0, 1] inputs, "
                     "mean = [127.5] and std = [127.5] for [-1, 1]")
        return pre, notes

    def near(a: float, b: float) -> bool:
        return math.isclose(a, b, abs_tol=0.05 * max(1.0, abs(b)))

    low, high = span
    if near(low, 0.0) and near(high, 1.0):
        pre["std"] = [255.0]
    elif near(low, -1.0) and near(high, 1.0):
        pre["mean"], pre["std"] = [127.5], [127.5]
    elif not (near(low, 0.0) and near(high, 255.0)):
        notes.append(f"the input's quantisation covers [{low:.4g}, {high:.4g}]; choose mean/std to map pixels there")
        return pre, notes
    notes.append(f"guessed from the input's quantisation range [{low:.4g}, {high:.4g}]")
    return pre, notes


def _preprocess_from_shape(spec: TensorSpec) -> tuple[dict[str, Any], list[str]]:
    """A preprocess section from the input tensor's shape alone."""
    shape = list(spec.shape)
    core = shape[1:] if len(shape) > 1 and shape[0] == 1 else shape
    if len(shape) == 4 and shape[0] == 1 and shape[3] in (1, 3) and min(shape[1:3]) > 1:
        pre, notes = _image_preprocess(spec)
        if shape[3] == 1:
            notes.append('a [1, frames, bins, 1] spectrogram input needs kind = "audio" instead')
        return pre, notes
    if len(core) == 1 and core[0] > 1:
        rate = 16000
        return ({"kind": "audio", "feature": "waveform", "sample_rate": rate, "window_s": core[0] / rate,
                 "hop_s": min(0.25, core[0] / rate)},
                [f"a raw waveform of {core[0]} samples; check sample_rate (window_s = samples / sample_rate)"])
    dims = [d for d in core if d != 1]
    if len(dims) == 2:
        frames, bins = dims
        rate, step, length = 16000, 320, 480
        window = ((frames - 1) * step + length) / rate
        return ({"kind": "audio", "feature": "logmel", "sample_rate": rate, "window_s": round(window, 6),
                 "frame_length": length, "frame_step": step, "n_mels": bins},
                [f"{frames} frames x {bins} features: set the front end the model was trained with "
                 "(feature logmel or mfcc, frame_length, frame_step, fft_length, fmin, fmax)"])
    return ({"kind": "image", "width": 1, "height": 1},
            [f"cannot tell the input kind from its shape {shape}; describe it by hand"])


def suggest_sidecar(path: Path, data: bytes, inputs: list[TensorSpec], outputs: list[TensorSpec],
                    guess: OutputGuess, has_metadata: bool) -> Sidecar:
    """Sidecar fields from the TFLite metadata when it says enough, else from tensor shapes."""
    notes: dict[str, list[str]] = {}
    if has_metadata:
        try:
            from_metadata = metadata_sidecar(data, inputs, outputs, str(path))
        except BundleError as exc:
            notes[""] = [f"the TFLite metadata was not enough: {exc}"]
        else:
            if from_metadata is not None:
                output = dict(from_metadata.get("output", {}))
                if guess.detection_format == output.get("detection_format"):
                    output = {**guess.output, **output}
                fields = {"name": _name(path.stem), **from_metadata}
                fields.pop("output", None)
                if output:
                    fields["output"] = output
                return Sidecar(fields, "metadata", notes)
    pre, pre_notes = _preprocess_from_shape(inputs[0]) if inputs else ({}, [])
    notes["preprocess"] = pre_notes
    task = "audio_classify" if pre.get("kind") == "audio" and guess.task == "classify" else guess.task
    fields = {"name": _name(path.stem), "version": "1", "task": task, "preprocess": pre}
    if guess.output:
        fields["output"] = dict(guess.output)
    notes.setdefault("", []).append(f"output format guessed from shapes: {guess.summary}")
    return Sidecar(fields, "shapes", notes)


# --------------------------------------------------------------------------- report


def _tensor_line(index: int, spec: TensorSpec) -> str:
    quant = f"  scale {spec.scale:.6g} zero point {spec.zero_point}" if spec.scale else ""
    return f"  {index}  {spec.name or '-'}  {spec.dtype}  {list(spec.shape)}{quant}"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} x{count}" for name, count in counts.items())


def _quantisation_line(ops: OpSummary) -> str:
    if not ops.quantized:
        return "quantisation: none (float model)" if ops.float_ops else "quantisation: no compute ops"
    if ops.float_ops:
        return f"quantisation: integer, but float ops remain: {_counts(ops.float_ops)}"
    return f"quantisation: integer (all {ops.total} ops)"


def _tensor_metadata_lines(kind: str, index: int, meta: TensorMetadata) -> list[str]:
    parts: list[str] = []
    content = meta.content
    if isinstance(content, ImageProperties):
        size = f", default size {content.default_size[0]}x{content.default_size[1]}" if content.default_size else ""
        parts.append(f"image {content.color_space}{size}")
    elif isinstance(content, AudioProperties):
        parts.append(f"audio {content.sample_rate} Hz, {content.channels} channel(s)")
    elif isinstance(content, BoundingBoxProperties):
        parts.append(f"boxes {content.type} {content.coordinate_type} index {list(content.index)}")
    if meta.mean or meta.std:
        parts.append(f"mean {list(meta.mean)} std {list(meta.std)}")
    if meta.score_threshold is not None:
        parts.append(f"score threshold {meta.score_threshold:g}")
    other = [u for u in meta.process_units if u not in ("NormalizationOptions", "ScoreThresholdingOptions")]
    if other:
        parts.append("process units " + ", ".join(other))
    if meta.stats_min or meta.stats_max:
        parts.append(f"range {list(meta.stats_min)}..{list(meta.stats_max)}")
    parts.extend(f"{f.name} ({f.type}{', ' + f.locale if f.locale else ''})" for f in meta.associated_files)
    return [f"  {kind} {index} {meta.name or '-'}: " + ("; ".join(parts) or "no details")]


def format_report(ins: Inspection) -> str:
    """The human-readable report."""
    lines = [f"model: {ins.path} ({ins.size_bytes} bytes, sha256 {ins.sha256[:12]}, schema "
             f"v{ins.model.schema_version}, {ins.model.subgraph_count} subgraph(s))", "inputs:"]
    lines.extend(_tensor_line(i, s) for i, s in enumerate(ins.inputs))
    lines.append("outputs:")
    lines.extend(_tensor_line(i, s) for i, s in enumerate(ins.outputs))
    lines.append(f"ops (subgraph 0, {ins.ops.total}): {_counts(ins.ops.counts) or 'none'}")
    lines.append(_quantisation_line(ins.ops))
    entries = ", ".join(f"{name} ({len(raw)} bytes)" for name, raw in ins.model.metadata.items())
    lines.append(f"metadata entries: {entries or 'none'}")
    if ins.metadata_error:
        lines.append(f"TFLite metadata: unreadable: {ins.metadata_error}")
    elif ins.metadata is None:
        lines.append("TFLite metadata: none")
    else:
        m = ins.metadata
        about = [f"{key} {value!r}" for key, value in (("name", m.name), ("version", m.version),
                                                        ("author", m.author), ("license", m.license)) if value]
        lines.append("TFLite metadata: " + (", ".join(about) or "no model details"))
        if m.description:
            lines.append(f"  {m.description}")
        for i, t in enumerate(m.inputs):
            lines.extend(_tensor_metadata_lines("input", i, t))
        for i, t in enumerate(m.outputs):
            lines.extend(_tensor_metadata_lines("output", i, t))
        if ins.labels_error:
            lines.append(f"labels: unreadable: {ins.labels_error}")
        elif ins.labels is not None:
            shown = ", ".join(ins.labels[:5]) + (", ..." if len(ins.labels) > 5 else "")
            lines.append(f"labels: {len(ins.labels)} ({shown})")
        else:
            lines.append("labels: none in the metadata")
    lines.append(f"output format: {ins.guess.summary}")
    source = "TFLite metadata" if ins.sidecar.source == "metadata" else "shapes (needs checking)"
    lines.append(f"runs without a sidecar: {'yes' if ins.sidecar.source == 'metadata' else 'no'}; "
                 f"--write-sidecar would use the {source}")
    return "\n".join(lines)


def report_json(ins: Inspection) -> dict[str, Any]:
    """The report as plain data."""
    return {
        "model": str(ins.path),
        "size_bytes": ins.size_bytes,
        "sha256": ins.sha256,
        "schema_version": ins.model.schema_version,
        "subgraphs": ins.model.subgraph_count,
        "inputs": [s.model_dump(mode="json") for s in ins.inputs],
        "outputs": [s.model_dump(mode="json") for s in ins.outputs],
        "ops": ins.ops.counts,
        "quantized": ins.ops.quantized,
        "float_ops": ins.ops.float_ops,
        "metadata_entries": {name: len(raw) for name, raw in ins.model.metadata.items()},
        "metadata": asdict(ins.metadata) if ins.metadata is not None else None,
        "metadata_error": ins.metadata_error,
        "labels": len(ins.labels) if ins.labels is not None else None,
        "labels_error": ins.labels_error,
        "output_format": asdict(ins.guess),
        "sidecar": {"source": ins.sidecar.source, "fields": ins.sidecar.fields},
    }
