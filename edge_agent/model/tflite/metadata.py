"""TFLite Model Metadata (``metadata_schema.fbs`` of tflite-support, identifier ``M001``).

It is a second FlatBuffer stored in one of the model's buffers and named by a
``Model.metadata`` entry ``TFLITE_METADATA``; its associated files (labels,
vocabularies) are a zip archive appended to the model bytes.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass

from edge_agent.errors import BundleError
from edge_agent.model.tflite.flatbuffer import F32, I8, I32, U32, Buffer, Table
from edge_agent.model.tflite.model import TfliteModel

METADATA_IDENTIFIER = b"M001"
METADATA_NAME = "TFLITE_METADATA"
MAX_ASSOCIATED_FILE_BYTES = 16 * 1024 * 1024
MAX_LABELS = 100_000

# Enums of metadata_schema.fbs.
ASSOCIATED_FILE_TYPES = {
    0: "UNKNOWN", 1: "DESCRIPTIONS", 2: "TENSOR_AXIS_LABELS", 3: "TENSOR_VALUE_LABELS",
    4: "TENSOR_AXIS_SCORE_CALIBRATION", 5: "VOCABULARY", 6: "SCANN_INDEX_FILE",
}
TENSOR_AXIS_LABELS = 2
TENSOR_VALUE_LABELS = 3
COLOR_SPACES = {0: "UNKNOWN", 1: "RGB", 2: "GRAYSCALE"}
BOUNDING_BOX_TYPES = {0: "UNKNOWN", 1: "BOUNDARIES", 2: "UPPER_LEFT", 3: "CENTER"}
COORDINATE_TYPES = {0: "RATIO", 1: "PIXEL"}
# ContentProperties union: 0 is NONE.
_FEATURE, _IMAGE, _BOUNDING_BOX, _AUDIO = 1, 2, 3, 4
# ProcessUnitOptions union.
PROCESS_UNITS = {
    1: "NormalizationOptions", 2: "ScoreCalibrationOptions", 3: "ScoreThresholdingOptions",
    4: "BertTokenizerOptions", 5: "SentencePieceTokenizerOptions", 6: "RegexTokenizerOptions",
}
_NORMALIZATION, _SCORE_THRESHOLDING = 1, 3



@dataclass(frozen=True)
class AssociatedFile:
    name: str
    type: str  # TENSOR_AXIS_LABELS, ...
    description: str = ""
    locale: str = ""


@dataclass(frozen=True)
class ImageProperties:
    color_space: str  # UNKNOWN | RGB | GRAYSCALE
    default_size: tuple[int, int] | None = None  # (width, height)


@dataclass(frozen=True)
class AudioProperties:
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class BoundingBoxProperties:
    index: tuple[int, ...]  # positions of left, top, right, bottom (BOUNDARIES) in the last axis
    type: str
    coordinate_type: str  # RATIO | PIXEL


Content = ImageProperties | AudioProperties | BoundingBoxProperties


@dataclass(frozen=True)
class TensorMetadata:
    name: str = ""
    description: str = ""
    content: Content | None = None
    value_range: tuple[int, int] | None = None
    process_units: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()  # NormalizationOptions: (value - mean) / std
    std: tuple[float, ...] = ()
    score_threshold: float | None = None  # ScoreThresholdingOptions
    stats_min: tuple[float, ...] = ()
    stats_max: tuple[float, ...] = ()
    associated_files: tuple[AssociatedFile, ...] = ()


@dataclass(frozen=True)
class ModelMetadata:
    name: str = ""
    description: str = ""
    version: str = ""
    author: str = ""
    license: str = ""
    min_parser_version: str = ""
    inputs: tuple[TensorMetadata, ...] = ()  # of subgraph 0
    outputs: tuple[TensorMetadata, ...] = ()
    associated_files: tuple[AssociatedFile, ...] = ()  # model and subgraph level

    def files(self) -> list[AssociatedFile]:
        """Every associated file, model, subgraph and tensor level."""
        found = list(self.associated_files)
        for tensor in (*self.inputs, *self.outputs):
            found.extend(tensor.associated_files)
        return found


def _associated_files(table: Table, slot: int) -> tuple[AssociatedFile, ...]:
    return tuple(
        AssociatedFile(name=f.string(0), description=f.string(1),
                       type=ASSOCIATED_FILE_TYPES.get(f.scalar(2, I8), "UNKNOWN"), locale=f.string(3))
        for f in table.tables(slot)
    )


def _content(table: Table | None) -> tuple[Content | None, tuple[int, int] | None]:
    if table is None:
        return None, None
    kind, props = table.union(0)  # content_properties: slots 0 (type) and 1 (value)
    content: Content | None = None
    if props is not None and kind == _IMAGE:
        size = props.table(1)
        content = ImageProperties(
            color_space=COLOR_SPACES.get(props.scalar(0, I8), "UNKNOWN"),
            default_size=(size.scalar(0, U32), size.scalar(1, U32)) if size is not None else None,
        )
    elif props is not None and kind == _AUDIO:
        content = AudioProperties(sample_rate=props.scalar(0, U32), channels=props.scalar(1, U32))
    elif props is not None and kind == _BOUNDING_BOX:
        content = BoundingBoxProperties(
            index=tuple(int(i) for i in props.numbers(0, U32)),
            type=BOUNDING_BOX_TYPES.get(props.scalar(1, I8), "UNKNOWN"),
            coordinate_type=COORDINATE_TYPES.get(props.scalar(2, I8), "RATIO"),
        )
    value_range = table.table(2)
    return content, (None if value_range is None else (value_range.scalar(0, I32), value_range.scalar(1, I32)))


def _tensor_metadata(table: Table) -> TensorMetadata:
    content, value_range = _content(table.table(3))
    units: list[str] = []
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    threshold: float | None = None
    for unit in table.tables(4):
        kind, options = unit.union(0)
        units.append(PROCESS_UNITS.get(kind, f"unknown({kind})"))
        if options is not None and kind == _NORMALIZATION:
            mean = tuple(float(v) for v in options.numbers(0, F32))
            std = tuple(float(v) for v in options.numbers(1, F32))
        elif options is not None and kind == _SCORE_THRESHOLDING:
            threshold = options.f32(0)
    stats = table.table(5)
    return TensorMetadata(
        name=table.string(0),
        description=table.string(1),
        content=content,
        value_range=value_range,
        process_units=tuple(units),
        mean=mean,
        std=std,
        score_threshold=threshold,
        stats_max=tuple(float(v) for v in stats.numbers(0, F32)) if stats else (),
        stats_min=tuple(float(v) for v in stats.numbers(1, F32)) if stats else (),
        associated_files=_associated_files(table, 6),
    )


def parse_model_metadata(data: bytes, what: str = "TFLite metadata") -> ModelMetadata:
    """Parse a ``TFLITE_METADATA`` buffer (ModelMetadata, identifier M001).

    Raises:
        BundleError: not a ModelMetadata FlatBuffer, or a malformed one.
    """
    buf = Buffer(bytes(data), what)
    root = buf.root(METADATA_IDENTIFIER)
    subgraphs = root.tables(3)
    files = list(_associated_files(root, 6))
    inputs: tuple[TensorMetadata, ...] = ()
    outputs: tuple[TensorMetadata, ...] = ()
    if subgraphs:
        inputs = tuple(_tensor_metadata(t) for t in subgraphs[0].tables(2))
        outputs = tuple(_tensor_metadata(t) for t in subgraphs[0].tables(3))
        files.extend(_associated_files(subgraphs[0], 4))
    return ModelMetadata(
        name=root.string(0),
        description=root.string(1),
        version=root.string(2),
        author=root.string(4),
        license=root.string(5),
        min_parser_version=root.string(7),
        inputs=inputs,
        outputs=outputs,
        associated_files=tuple(files),
    )


def model_metadata(model: TfliteModel, what: str = "model") -> ModelMetadata | None:
    """The model's TFLite Model Metadata, or None when it has none."""
    raw = model.metadata.get(METADATA_NAME)
    return None if raw is None else parse_model_metadata(raw, f"{what}: {METADATA_NAME}")


def associated_file(model_bytes: bytes, name: str, limit: int = MAX_ASSOCIATED_FILE_BYTES,
                    what: str = "model") -> bytes:
    """Read an associated file from the zip archive the metadata populator appends to the model.

    Raises:
        BundleError: no archive, no such member, larger than ``limit``, or a broken archive.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(model_bytes)) as archive:
            try:
                info = archive.getinfo(name)
            except KeyError:
                raise BundleError(f"{what}: metadata names {name!r} but the file is not packed in "
                                  "the model") from None
            if info.file_size > limit:
                raise BundleError(f"{what}: associated file {name!r} is larger than {limit} bytes")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise BundleError(f"{what}: associated file {name!r} uses an unsupported compression")
            with archive.open(info) as member:
                content = member.read(limit + 1)  # the header's size may lie
    except BundleError:
        raise
    except zipfile.BadZipFile as exc:
        raise BundleError(f"{what}: metadata names {name!r} but the model has no readable packed "
                          f"files ({exc})") from exc
    except (OSError, ValueError, EOFError, NotImplementedError, RuntimeError, OverflowError, struct.error,
            zlib.error) as exc:
        raise BundleError(f"{what}: cannot read associated file {name!r}: {exc}") from exc
    if len(content) > limit:
        raise BundleError(f"{what}: associated file {name!r} is larger than {limit} bytes")
    return content


def label_file(metadata: ModelMetadata) -> AssociatedFile | None:
    """The labels of the outputs: axis labels first (classifiers), then value labels
    (detectors' class tensor); a file without locale is preferred over translations."""
    for kind in ("TENSOR_AXIS_LABELS", "TENSOR_VALUE_LABELS"):
        files = [f for t in metadata.outputs for f in t.associated_files if f.type == kind]
        if files:
            return next((f for f in files if not f.locale), files[0])
    return None


def metadata_labels(model_bytes: bytes, metadata: ModelMetadata, what: str = "model") -> list[str] | None:
    """The output labels from the packed labels file, or None when the metadata names none."""
    found = label_file(metadata)
    if found is None:
        return None
    raw = associated_file(model_bytes, found.name, what=what)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{what}: labels file {found.name!r} is not UTF-8") from exc
    labels = text.splitlines()
    if len(labels) > MAX_LABELS:
        raise BundleError(f"{what}: labels file {found.name!r} has more than {MAX_LABELS} lines")
    return labels
