"""Build small ``.tflite`` files with TFLite Model Metadata, without TensorFlow or tflite-support.

Models are written with the object API of ``ai_edge_litert.schema_py_generated`` (the
TFLite schema LiteRT ships); the metadata is written field by field with
``flatbuffers.Builder`` following tflite-support's ``metadata_schema.fbs`` (slot numbers in
the comments), then added the way tflite-support's populator does: a ``TFLITE_METADATA``
entry pointing at a new buffer, and the associated files appended as a zip archive.

* :func:`colours_model` — 16x16 RGB → MEAN over H, W → SOFTMAX: scores for red, green,
  blue from the channel means (float32, int8 or uint8 end to end).
* :func:`waveform_model` — [1, N] float samples → FULLY_CONNECTED → SOFTMAX over
  "up"/"down": the sign of the mean sample.
* :func:`custom_op_model` — ops only for counting (a custom op and a builtin code > 127);
  never given to an interpreter.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as tfl

# metadata_schema.fbs enums
AXIS_LABELS, VALUE_LABELS = 2, 3
RGB, GRAYSCALE = 1, 2
FEATURE, IMAGE, BOUNDING_BOX, AUDIO = 1, 2, 3, 4
NORMALIZATION, SCORE_THRESHOLDING = 1, 3

TYPES = {"float32": tfl.TensorType.FLOAT32, "int8": tfl.TensorType.INT8, "uint8": tfl.TensorType.UINT8,
         "int32": tfl.TensorType.INT32, "int64": tfl.TensorType.INT64}


# --------------------------------------------------------------------------- models


def _tensor(name: str, shape: list[int], dtype: str, buffer: int = 0,
            quant: tuple[float, int] | None = None) -> tfl.TensorT:
    tensor = tfl.TensorT()
    tensor.name, tensor.shape, tensor.type, tensor.buffer = name, shape, TYPES[dtype], buffer
    if quant is not None:
        q = tfl.QuantizationParametersT()
        q.scale, q.zeroPoint = [quant[0]], [quant[1]]
        tensor.quantization = q
    return tensor


def _opcode(code: int, version: int = 1, custom: str | None = None) -> tfl.OperatorCodeT:
    op = tfl.OperatorCodeT()
    op.builtinCode, op.deprecatedBuiltinCode, op.version, op.customCode = code, min(code, 127), version, custom
    return op


def _operator(index: int, inputs: list[int], outputs: list[int], options_type: int = 0,
              options: object = None) -> tfl.OperatorT:
    op = tfl.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = index, inputs, outputs
    op.builtinOptionsType, op.builtinOptions = options_type, options
    return op


def _buffer(data: bytes | None = None) -> tfl.BufferT:
    buffer = tfl.BufferT()
    if data is not None:
        buffer.data = np.frombuffer(data, dtype=np.uint8)
    return buffer


def _finish(model: tfl.ModelT) -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _model(codes: list[tfl.OperatorCodeT], tensors: list[tfl.TensorT], ops: list[tfl.OperatorT],
           buffers: list[tfl.BufferT], inputs: list[int], outputs: list[int]) -> bytes:
    subgraph = tfl.SubGraphT()
    subgraph.tensors, subgraph.operators, subgraph.inputs, subgraph.outputs = tensors, ops, inputs, outputs
    subgraph.name = "main"
    model = tfl.ModelT()
    model.version, model.description = 3, "tests.tflite_builders"
    model.operatorCodes, model.subgraphs, model.buffers = codes, [subgraph], buffers
    return _finish(model)


def colours_model(dtype: str = "float32", size: int = 16) -> bytes:
    """[1, size, size, 3] pixels in 0..1 (float) → softmax(20 * channel means) for red, green, blue."""
    quant = {"float32": (None, None), "int8": ((1 / 255, -128), (1 / 256, -128)),
             "uint8": ((1 / 255, 0), (1 / 256, 0))}[dtype]
    version = 1 if dtype == "float32" else 2
    softmax = tfl.SoftmaxOptionsT()
    softmax.beta = 20.0
    reducer = tfl.ReducerOptionsT()
    reducer.keepDims = False
    tensors = [
        _tensor("image", [1, size, size, 3], dtype, quant=quant[0]),
        _tensor("axes", [2], "int32", buffer=1),
        _tensor("means", [1, 3], dtype, quant=quant[0]),
        _tensor("scores", [1, 3], dtype, quant=quant[1]),
    ]
    ops = [
        _operator(0, [0, 1], [2], tfl.BuiltinOptions.ReducerOptions, reducer),
        _operator(1, [2], [3], tfl.BuiltinOptions.SoftmaxOptions, softmax),
    ]
    codes = [_opcode(tfl.BuiltinOperator.MEAN, version), _opcode(tfl.BuiltinOperator.SOFTMAX, version)]
    buffers = [_buffer(), _buffer(np.array([1, 2], dtype="<i4").tobytes())]
    return _model(codes, tensors, ops, buffers, [0], [3])


def waveform_model(samples: int = 1600) -> bytes:
    """[1, samples] float → softmax(50 * [mean, -mean]) for "up", "down"."""
    weights = np.stack([np.full(samples, 1.0 / samples), np.full(samples, -1.0 / samples)]).astype("<f4")
    fc = tfl.FullyConnectedOptionsT()
    softmax = tfl.SoftmaxOptionsT()
    softmax.beta = 50.0
    tensors = [
        _tensor("waveform", [1, samples], "float32"),
        _tensor("weights", [2, samples], "float32", buffer=1),
        _tensor("logits", [1, 2], "float32"),
        _tensor("scores", [1, 2], "float32"),
    ]
    ops = [
        _operator(0, [0, 1, -1], [2], tfl.BuiltinOptions.FullyConnectedOptions, fc),
        _operator(1, [2], [3], tfl.BuiltinOptions.SoftmaxOptions, softmax),
    ]
    codes = [_opcode(tfl.BuiltinOperator.FULLY_CONNECTED), _opcode(tfl.BuiltinOperator.SOFTMAX)]
    return _model(codes, tensors, ops, [_buffer(), _buffer(weights.tobytes())], [0], [3])


def custom_op_model() -> bytes:
    """int8 graph: QUANTIZE (boundary) → custom "MyOp" → SIN in float → ADD (int8) → DEQUANTIZE
    (boundary); opcode STABLEHLO_ADD (> 127) listed too. For counting only."""
    tensors = [
        _tensor("in", [1, 4], "float32"),
        _tensor("q", [1, 4], "int8", quant=(0.1, 0)),
        _tensor("custom", [1, 4], "int8", quant=(0.1, 0)),
        _tensor("sin", [1, 4], "float32"),
        _tensor("sum", [1, 4], "int8", quant=(0.1, 0)),
        _tensor("out", [1, 4], "float32"),
    ]
    codes = [_opcode(tfl.BuiltinOperator.QUANTIZE), _opcode(tfl.BuiltinOperator.CUSTOM, custom="MyOp"),
             _opcode(tfl.BuiltinOperator.SIN), _opcode(tfl.BuiltinOperator.ADD),
             _opcode(tfl.BuiltinOperator.DEQUANTIZE), _opcode(tfl.BuiltinOperator.STABLEHLO_ADD)]
    ops = [_operator(0, [0], [1]), _operator(1, [1], [2]), _operator(2, [2], [3]),
           _operator(3, [2, 2], [4]), _operator(3, [4, 4], [4]), _operator(4, [4], [5]),
           _operator(5, [4, 4], [4])]
    return _model(codes, tensors, ops, [_buffer()], [0], [5])


# --------------------------------------------------------------------------- metadata


@dataclass
class File:
    name: str
    type: int = AXIS_LABELS
    description: str = ""
    locale: str = ""


@dataclass
class Tensor:
    """TensorMetadata; ``content`` is ("image", color_space, (w, h) | None),
    ("audio", rate, channels) or ("boxes", [index], type)."""

    name: str = ""
    description: str = ""
    content: tuple[object, ...] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    score_threshold: float | None = None
    stats: tuple[list[float], list[float]] | None = None  # (max, min)
    value_range: tuple[int, int] | None = None
    files: list[File] = field(default_factory=list)


def _offsets(b: flatbuffers.Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return int(b.EndVector())


def _floats(b: flatbuffers.Builder, values: list[float]) -> int:
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependFloat32(v)
    return int(b.EndVector())


def _uints(b: flatbuffers.Builder, values: list[int]) -> int:
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependUint32(v)
    return int(b.EndVector())


def _file(b: flatbuffers.Builder, f: File) -> int:
    # AssociatedFile: name 0, description 1, type 2, locale 3, version 4
    name, desc = b.CreateString(f.name), b.CreateString(f.description)
    locale = b.CreateString(f.locale) if f.locale else 0
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    b.PrependUOffsetTRelativeSlot(1, desc, 0)
    b.PrependInt8Slot(2, f.type, 0)
    if locale:
        b.PrependUOffsetTRelativeSlot(3, locale, 0)
    return int(b.EndObject())


def _content(b: flatbuffers.Builder, t: Tensor) -> int:
    assert t.content is not None
    kind = t.content[0]
    if kind == "image":
        _, color, size = t.content
        size_off = 0
        if size is not None:  # ImageSize: width 0, height 1
            b.StartObject(2)
            b.PrependUint32Slot(0, size[0], 0)  # type: ignore[index]
            b.PrependUint32Slot(1, size[1], 0)  # type: ignore[index]
            size_off = b.EndObject()
        b.StartObject(2)  # ImageProperties: color_space 0, default_size 1
        b.PrependInt8Slot(0, color, 0)
        if size_off:
            b.PrependUOffsetTRelativeSlot(1, size_off, 0)
        props, union_type = b.EndObject(), IMAGE
    elif kind == "audio":
        b.StartObject(2)  # AudioProperties: sample_rate 0, channels 1
        b.PrependUint32Slot(0, t.content[1], 0)
        b.PrependUint32Slot(1, t.content[2], 0)
        props, union_type = b.EndObject(), AUDIO
    else:
        index = _uints(b, list(t.content[1]))  # type: ignore[call-overload]
        b.StartObject(3)  # BoundingBoxProperties: index 0, type 1, coordinate_type 2
        b.PrependUOffsetTRelativeSlot(0, index, 0)
        b.PrependInt8Slot(1, t.content[2], 0)
        props, union_type = b.EndObject(), BOUNDING_BOX
    value_range = 0
    if t.value_range is not None:
        b.StartObject(2)  # ValueRange: min 0, max 1
        b.PrependInt32Slot(0, t.value_range[0], 0)
        b.PrependInt32Slot(1, t.value_range[1], 0)
        value_range = b.EndObject()
    b.StartObject(3)  # Content: content_properties_type 0, content_properties 1, range 2
    b.PrependUint8Slot(0, union_type, 0)
    b.PrependUOffsetTRelativeSlot(1, props, 0)
    if value_range:
        b.PrependUOffsetTRelativeSlot(2, value_range, 0)
    return int(b.EndObject())


def _process_units(b: flatbuffers.Builder, t: Tensor) -> list[int]:
    units = []
    if t.mean is not None and t.std is not None:
        mean, std = _floats(b, t.mean), _floats(b, t.std)
        b.StartObject(2)  # NormalizationOptions: mean 0, std 1
        b.PrependUOffsetTRelativeSlot(0, mean, 0)
        b.PrependUOffsetTRelativeSlot(1, std, 0)
        units.append((NORMALIZATION, b.EndObject()))
    if t.score_threshold is not None:
        b.StartObject(1)  # ScoreThresholdingOptions: global_score_threshold 0
        b.PrependFloat32Slot(0, t.score_threshold, 0.0)
        units.append((SCORE_THRESHOLDING, b.EndObject()))
    out = []
    for kind, options in units:
        b.StartObject(2)  # ProcessUnit: options_type 0, options 1
        b.PrependUint8Slot(0, kind, 0)
        b.PrependUOffsetTRelativeSlot(1, options, 0)
        out.append(b.EndObject())
    return out


def _tensor_md(b: flatbuffers.Builder, t: Tensor) -> int:
    # TensorMetadata: name 0, description 1, dimension_names 2, content 3, process_units 4,
    # stats 5, associated_files 6
    name, desc = b.CreateString(t.name), b.CreateString(t.description)
    content = _content(b, t) if t.content is not None else 0
    units = _process_units(b, t)
    units_vec = _offsets(b, units) if units else 0
    stats = 0
    if t.stats is not None:
        high, low = _floats(b, t.stats[0]), _floats(b, t.stats[1])
        b.StartObject(2)  # Stats: max 0, min 1
        b.PrependUOffsetTRelativeSlot(0, high, 0)
        b.PrependUOffsetTRelativeSlot(1, low, 0)
        stats = b.EndObject()
    files = _offsets(b, [_file(b, f) for f in t.files]) if t.files else 0
    b.StartObject(7)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    b.PrependUOffsetTRelativeSlot(1, desc, 0)
    for slot, off in ((3, content), (4, units_vec), (5, stats), (6, files)):
        if off:
            b.PrependUOffsetTRelativeSlot(slot, off, 0)
    return int(b.EndObject())


def model_metadata(inputs: list[Tensor], outputs: list[Tensor], name: str = "", description: str = "",
                   version: str = "", author: str = "", license: str = "",
                   model_files: list[File] | None = None) -> bytes:
    """A ModelMetadata FlatBuffer (file identifier M001) with one subgraph."""
    b = flatbuffers.Builder(1024)
    ins = _offsets(b, [_tensor_md(b, t) for t in inputs])
    outs = _offsets(b, [_tensor_md(b, t) for t in outputs])
    b.StartObject(10)  # SubGraphMetadata: input_tensor_metadata 2, output_tensor_metadata 3
    b.PrependUOffsetTRelativeSlot(2, ins, 0)
    b.PrependUOffsetTRelativeSlot(3, outs, 0)
    subgraph = b.EndObject()
    subgraphs = _offsets(b, [subgraph])
    strings = {slot: b.CreateString(text) for slot, text in
               ((0, name), (1, description), (2, version), (4, author), (5, license), (7, "1.0.0")) if text}
    files = _offsets(b, [_file(b, f) for f in model_files]) if model_files else 0
    # ModelMetadata: name 0, description 1, version 2, subgraph_metadata 3, author 4, license 5,
    # associated_files 6, min_parser_version 7
    b.StartObject(8)
    for slot, off in strings.items():
        b.PrependUOffsetTRelativeSlot(slot, off, 0)
    b.PrependUOffsetTRelativeSlot(3, subgraphs, 0)
    if files:
        b.PrependUOffsetTRelativeSlot(6, files, 0)
    b.Finish(b.EndObject(), file_identifier=b"M001")
    return bytes(b.Output())


def attach_metadata(model_bytes: bytes, metadata: bytes, files: dict[str, bytes] | None = None,
                    name: str = "TFLITE_METADATA") -> bytes:
    """The model with ``metadata`` in a new buffer named by a Model.metadata entry, and
    ``files`` appended as a zip archive (as tflite-support's MetadataPopulator does)."""
    model = tfl.ModelT.InitFromPackedBuf(model_bytes, 0)
    model.buffers.append(_buffer(metadata))
    entry = tfl.MetadataT()
    entry.name, entry.buffer = name, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    out = _finish(model)
    if files:
        stream = io.BytesIO(out)
        with zipfile.ZipFile(stream, "a") as archive:
            for member, content in files.items():
                archive.writestr(member, content)
        out = stream.getvalue()
    return out


def image_classifier(dtype: str = "float32", labels: tuple[str, ...] = ("red", "green", "blue"),
                     name: str = "Colour classifier", locale_labels: bool = False) -> bytes:
    """:func:`colours_model` with Task-Library-style image classifier metadata and labels."""
    files = [File("labels.txt", AXIS_LABELS, "colour names")]
    packed = {"labels.txt": "\n".join(labels).encode() + b"\n"}
    if locale_labels:
        files.insert(0, File("labels_fr.txt", AXIS_LABELS, locale="fr"))
        packed["labels_fr.txt"] = b"rouge\nvert\nbleu\n"
    meta = model_metadata(
        [Tensor("image", content=("image", RGB, (16, 16)), mean=[0.0], std=[255.0],
                stats=([1.0], [0.0]))],
        [Tensor("probability", stats=([1.0], [0.0]), files=files)],
        name=name, description="Scores red, green and blue", version="v2", author="tests",
        license="Apache-2.0",
    )
    return attach_metadata(colours_model(dtype), meta, packed)


def audio_classifier(samples: int = 1600, rate: int = 16000) -> bytes:
    """:func:`waveform_model` with Task-Library-style audio classifier metadata and labels."""
    meta = model_metadata(
        [Tensor("audio_clip", content=("audio", rate, 1))],
        [Tensor("scores", files=[File("labels.txt", AXIS_LABELS)])],
        name="updown", version="3",
    )
    return attach_metadata(waveform_model(samples), meta, {"labels.txt": b"up\ndown\n"})
