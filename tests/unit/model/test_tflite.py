"""Reading .tflite files and their TFLite Model Metadata (edge_agent.model.tflite), running a
model from its metadata alone, and ``edge-agent inspect``.

The models and metadata are written in the test (tests/tflite_builders.py) with the
FlatBuffers object API and ``flatbuffers.Builder``; LiteRT runs them in-process.
"""

from __future__ import annotations

import contextlib
import io
import json
import struct
import tomllib
import zipfile
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as tfl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.cli import main as cli
from edge_agent.errors import BundleError
from edge_agent.model import inspect as inspect_model
from edge_agent.model import sidecar_toml
from edge_agent.model.loader import load_model, sidecar_manifest, verify_model
from edge_agent.model.manifest import ImagePreprocess, TensorSpec
from edge_agent.model.tflite import metadata as tflite_metadata
from edge_agent.model.tflite import model as tflite_model
from edge_agent.model.tflite import sidecar as tflite_sidecar
from edge_agent.preprocess import pixel_lookup_table
from edge_agent.runtimes import create_runtime
from tests import tflite_builders as tb

# --------------------------------------------------------------------------- helpers


def specs(model: bytes) -> tuple[list[TensorSpec], list[TensorSpec]]:
    runtime = create_runtime("litert", model)
    return runtime.inputs, runtime.outputs


def check_runs(sidecar: dict[str, object], model: bytes, tmp_path: Path) -> None:
    """The sidecar builds a valid manifest for this model."""
    inputs, outputs = specs(model)
    sidecar_manifest(sidecar, model, inputs, outputs, tmp_path / "m.toml", "m")


def detector_metadata() -> bytes:
    """Task-Library-style SSD detector metadata: boxes, classes (value labels), scores, count."""
    return tb.model_metadata(
        [tb.Tensor("image", content=("image", tb.RGB, None), mean=[127.5], std=[127.5])],
        [tb.Tensor("location", content=("boxes", [1, 0, 3, 2], 1), value_range=(2, 2)),
         tb.Tensor("category", files=[tb.File("labelmap.txt", tb.VALUE_LABELS)]),
         tb.Tensor("score", score_threshold=0.4),
         tb.Tensor("number of detections")],
        name="SSD MobileNet (quant)", version="1",
    )


DETECT_OUTPUTS = [
    TensorSpec(name="boxes", shape=[1, 10, 4], dtype="float32"),
    TensorSpec(name="classes", shape=[1, 10], dtype="float32"),
    TensorSpec(name="scores", shape=[1, 10], dtype="float32"),
    TensorSpec(name="count", shape=[1], dtype="float32"),
]


# --------------------------------------------------------------------------- model structure


@pytest.mark.parametrize("dtype", ["float32", "int8", "uint8"])
def test_read_model_tensors_match_the_interpreter(dtype: str) -> None:
    model = tb.image_classifier(dtype)
    info = tflite_model.read_model(model)
    inputs, outputs = specs(model)
    assert info.input_specs() == inputs
    assert info.output_specs() == outputs
    assert info.schema_version == 3 and info.subgraph_count == 1
    assert info.description == "tests.tflite_builders"
    assert list(info.metadata) == ["TFLITE_METADATA"]


def test_operators_counted_by_name_with_float_ops() -> None:
    plain = tflite_model.read_operators(tb.colours_model("float32"))
    assert plain.counts == {"MEAN": 1, "SOFTMAX": 1}
    assert not plain.quantized and plain.float_ops == {"MEAN": 1, "SOFTMAX": 1}
    quant = tflite_model.read_operators(tb.colours_model("int8"))
    assert quant.quantized and quant.float_ops == {} and quant.integer_ops == 2


def test_custom_ops_new_codes_and_float_islands() -> None:
    ops = tflite_model.read_operators(tb.custom_op_model())
    # custom op by custom_code; STABLEHLO_ADD (> 127) from builtin_code, not the byte field
    assert ops.counts == {"QUANTIZE": 1, "MyOp": 1, "SIN": 1, "ADD": 2, "DEQUANTIZE": 1, "STABLEHLO_ADD": 1}
    # QUANTIZE at the input and DEQUANTIZE at the output are the float boundary, not float ops
    assert ops.float_ops == {"SIN": 1}
    assert ops.quantized and ops.total == 7


def test_op_names_without_the_schema_module(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tflite_model.op_name(tfl.BuiltinOperator.CONV_2D) == "CONV_2D"
    assert tflite_model.op_name(9999) == "BUILTIN_9999"
    monkeypatch.setattr(tflite_model, "_builtin_names", dict)
    assert tflite_model.op_name(tfl.BuiltinOperator.CONV_2D) == "BUILTIN_3"


def test_metadata_in_an_external_buffer() -> None:
    """Buffer.offset/size (models over 2 GB keep data after the FlatBuffer, offset from the file start)."""
    meta = tb.model_metadata([tb.Tensor("image")], [tb.Tensor("scores")], name="far")
    model = tfl.ModelT.InitFromPackedBuf(tb.colours_model(), 0)
    buffer = tfl.BufferT()
    buffer.offset, buffer.size = 2, len(meta)
    model.buffers.append(buffer)
    entry = tfl.MetadataT()
    entry.name, entry.buffer = "TFLITE_METADATA", len(model.buffers) - 1
    model.metadata = [entry]
    size = len(tb._finish(model))
    buffer.offset = size  # fixed-width field: the packed size does not change
    packed = tb._finish(model)
    assert len(packed) == size
    info = tflite_model.read_model(packed + meta)
    metadata = tflite_metadata.model_metadata(info)
    assert metadata is not None and metadata.name == "far"
    with pytest.raises(BundleError, match="runs past the end"):
        tflite_model.read_model(packed + meta[:-1])


# --------------------------------------------------------------------------- metadata


def test_model_metadata_fields() -> None:
    info = tflite_model.read_model(tb.image_classifier())
    meta = tflite_metadata.model_metadata(info)
    assert meta is not None
    assert (meta.name, meta.description, meta.version, meta.author, meta.license, meta.min_parser_version) == (
        "Colour classifier", "Scores red, green and blue", "v2", "tests", "Apache-2.0", "1.0.0")
    (image,) = meta.inputs
    assert image.name == "image"
    assert image.content == tflite_metadata.ImageProperties("RGB", (16, 16))
    assert image.process_units == ("NormalizationOptions",)
    assert (image.mean, image.std) == ((0.0,), (255.0,))
    assert (image.stats_min, image.stats_max) == ((0.0,), (1.0,))
    (probability,) = meta.outputs
    assert probability.associated_files == (
        tflite_metadata.AssociatedFile("labels.txt", "TENSOR_AXIS_LABELS", "colour names"),)
    assert tflite_metadata.metadata_labels(tb.image_classifier(), meta) == ["red", "green", "blue"]


def test_detector_and_audio_metadata_fields() -> None:
    meta = tflite_metadata.parse_model_metadata(detector_metadata())
    boxes, classes, scores, _ = meta.outputs
    assert boxes.content == tflite_metadata.BoundingBoxProperties((1, 0, 3, 2), "BOUNDARIES", "RATIO")
    assert boxes.value_range == (2, 2)
    assert classes.associated_files[0].type == "TENSOR_VALUE_LABELS"
    assert scores.process_units == ("ScoreThresholdingOptions",)
    assert scores.score_threshold == pytest.approx(0.4)
    assert meta.inputs[0].content == tflite_metadata.ImageProperties("RGB", None)
    audio = tflite_metadata.model_metadata(tflite_model.read_model(tb.audio_classifier(rate=8000)))
    assert audio is not None and audio.inputs[0].content == tflite_metadata.AudioProperties(8000, 1)


def test_labels_prefer_the_file_without_locale() -> None:
    model = tb.image_classifier(locale_labels=True)
    meta = tflite_metadata.model_metadata(tflite_model.read_model(model))
    assert meta is not None
    assert [f.name for f in meta.outputs[0].associated_files] == ["labels_fr.txt", "labels.txt"]
    assert tflite_metadata.metadata_labels(model, meta) == ["red", "green", "blue"]


def test_labels_file_missing_or_too_large() -> None:
    meta = tb.model_metadata([tb.Tensor("image")], [tb.Tensor("scores", files=[tb.File("labels.txt")])])
    no_zip = tb.attach_metadata(tb.colours_model(), meta)
    parsed = tflite_metadata.model_metadata(tflite_model.read_model(no_zip))
    assert parsed is not None
    with pytest.raises(BundleError, match=r"'labels\.txt' but the model has no readable packed files"):
        tflite_metadata.metadata_labels(no_zip, parsed)
    other = tb.attach_metadata(tb.colours_model(), meta, {"other.txt": b"x\n"})
    with pytest.raises(BundleError, match="not packed in the model"):
        tflite_metadata.metadata_labels(other, parsed)
    big = tb.attach_metadata(tb.colours_model(), meta, {"labels.txt": b"x\n" * 1000})
    with pytest.raises(BundleError, match="larger than 100 bytes"):
        tflite_metadata.associated_file(big, "labels.txt", limit=100)


def test_associated_file_header_size_may_lie() -> None:
    """A zip header claiming a small size does not let a bigger member through."""
    meta = tb.model_metadata([tb.Tensor("image")], [tb.Tensor("scores", files=[tb.File("labels.txt")])])
    model = tb.attach_metadata(tb.colours_model(), meta, {"labels.txt": b"y" * 500})
    start = model.index(b"PK\x01\x02")  # central directory entry: uncompressed size at +24
    forged = model[:start + 24] + struct.pack("<I", 10) + model[start + 28:]
    with pytest.raises(BundleError):
        tflite_metadata.associated_file(forged, "labels.txt", limit=100)


# --------------------------------------------------------------------------- sidecar from metadata


def test_sidecar_of_an_image_classifier(tmp_path: Path) -> None:
    model = tb.image_classifier("float32")
    sidecar = tflite_sidecar.metadata_sidecar(model, *specs(model))
    assert sidecar == {
        "name": "Colour-classifier", "version": "v2", "task": "classify", "labels": ["red", "green", "blue"],
        "preprocess": {"kind": "image", "width": 16, "height": 16, "channels": 3, "color": "rgb",
                       "mean": [0.0], "std": [255.0]},
    }
    check_runs(sidecar, model, tmp_path)


def test_sidecar_of_a_model_without_metadata_is_none() -> None:
    model = tb.colours_model()
    assert tflite_sidecar.metadata_sidecar(model, *specs(model)) is None


def test_uint8_input_takes_raw_pixels_like_the_task_library() -> None:
    """Writers put mean/std 127.5 on quantised models too; a uint8 input is fed raw pixels."""
    meta = tb.model_metadata([tb.Tensor("image", content=("image", tb.RGB, None), mean=[127.5], std=[127.5])],
                             [tb.Tensor("scores")])
    model = tb.attach_metadata(tb.colours_model("uint8"), meta)
    inputs, outputs = specs(model)
    sidecar = tflite_sidecar.metadata_sidecar(model, inputs, outputs)
    assert sidecar is not None
    pre = sidecar["preprocess"]
    assert pre["mean"] == [0.0] and pre["std"] == [255.0]
    table = pixel_lookup_table(ImagePreprocess(**pre), inputs[0])
    assert np.array_equal(table[:, 0], np.arange(256))
    # an int8 input keeps the metadata's normalisation (then our quantisation)
    int8 = tb.attach_metadata(tb.colours_model("int8"), meta)
    sidecar8 = tflite_sidecar.metadata_sidecar(int8, *specs(int8))
    assert sidecar8 is not None and sidecar8["preprocess"]["mean"] == [127.5]


def test_sidecar_gray_and_default_size(tmp_path: Path) -> None:
    meta = tb.model_metadata([tb.Tensor("image", content=("image", tb.GRAYSCALE, (32, 24)))], [tb.Tensor("s")])
    model = tb.attach_metadata(tb.colours_model(), meta)
    gray = TensorSpec(name="image", shape=[1, 20, 10, 1], dtype="float32")
    dynamic = TensorSpec(name="image", shape=[1, 1, 1, 1], dtype="float32")
    scores = [TensorSpec(name="s", shape=[1, 3], dtype="float32")]
    sidecar = tflite_sidecar.metadata_sidecar(model, [gray], scores)
    assert sidecar is not None
    assert {k: sidecar["preprocess"][k] for k in ("width", "height", "channels", "color")} == {
        "width": 10, "height": 20, "channels": 1, "color": "gray"}
    sidecar = tflite_sidecar.metadata_sidecar(model, [dynamic], scores)
    assert sidecar is not None and (sidecar["preprocess"]["width"], sidecar["preprocess"]["height"]) == (32, 24)
    assert "name" not in sidecar  # no name in the metadata: the file stem is used


def test_sidecar_of_an_ssd_detector() -> None:
    model = tb.attach_metadata(tb.colours_model(), detector_metadata(), {"labelmap.txt": b"cat\ndog\n"})
    image = TensorSpec(name="image", shape=[1, 300, 300, 3], dtype="uint8", scale=0.0078125, zero_point=128)
    sidecar = tflite_sidecar.metadata_sidecar(model, [image], DETECT_OUTPUTS)
    assert sidecar is not None
    assert sidecar["name"] == "SSD-MobileNet-quant"
    assert sidecar["task"] == "detect" and sidecar["labels"] == ["cat", "dog"]
    assert sidecar["output"]["detection_format"] == "tflite_postprocess"
    assert sidecar["output"]["score_threshold"] == pytest.approx(0.4)  # from ScoreThresholdingOptions
    assert sidecar["preprocess"]["mean"] == [128.0] and sidecar["preprocess"]["std"] == [128.0]
    manifest = sidecar_manifest(sidecar, model, [image], DETECT_OUTPUTS, Path("x.toml"), "x")
    assert manifest.output.detection_format == "tflite_postprocess"


def test_sidecar_of_an_audio_classifier(tmp_path: Path) -> None:
    model = tb.audio_classifier(samples=1600, rate=8000)
    sidecar = tflite_sidecar.metadata_sidecar(model, *specs(model))
    assert sidecar is not None
    assert sidecar["task"] == "audio_classify" and sidecar["labels"] == ["up", "down"]
    assert sidecar["preprocess"] == {"kind": "audio", "feature": "waveform", "sample_rate": 8000,
                                     "window_s": 0.2, "hop_s": 0.2, "fmax": 4000.0}
    check_runs(sidecar, model, tmp_path)


def test_metadata_that_does_not_say_how_to_run() -> None:
    model = tb.attach_metadata(tb.colours_model(), tb.model_metadata([tb.Tensor("x")], [tb.Tensor("y")]))
    two = [TensorSpec(name="a", shape=[1, 5, 7], dtype="float32"),
           TensorSpec(name="b", shape=[1, 2], dtype="float32")]
    image = TensorSpec(name="x", shape=[1, 8, 8, 3], dtype="float32")
    with pytest.raises(BundleError, match="--write-sidecar"):
        tflite_sidecar.metadata_sidecar(model, [image], two)
    with pytest.raises(BundleError, match="does not describe an image or audio input"):
        tflite_sidecar.metadata_sidecar(model, [TensorSpec(name="x", shape=[1, 2, 3, 4, 5], dtype="float32")],
                                     two[1:])


# --------------------------------------------------------------------------- the agent's model loading


def test_load_a_model_from_its_metadata(tmp_path: Path) -> None:
    path = tmp_path / "colours.tflite"
    path.write_bytes(tb.image_classifier("int8"))
    verified = verify_model(path)
    assert verified.sidecar_from_metadata
    assert isinstance(verified.preprocess, ImagePreprocess) and verified.preprocess.std == [255.0]
    loaded = load_model(path)
    assert loaded.labels == ["red", "green", "blue"]
    assert loaded.manifest.task == "classify" and loaded.manifest.name == "Colour-classifier"
    assert loaded.manifest.inputs[0].dtype == "int8"


def test_a_sidecar_file_wins_over_metadata(tmp_path: Path) -> None:
    path = tmp_path / "colours.tflite"
    path.write_bytes(tb.image_classifier())
    (tmp_path / "colours.toml").write_text('task = "classify"\nlabels = ["r", "g", "b"]\n'
                                           '[preprocess]\nkind = "image"\nwidth = 16\nheight = 16\n')
    loaded = load_model(path)
    assert loaded.labels == ["r", "g", "b"] and loaded.manifest.name == "colours"


def test_no_sidecar_and_no_metadata_names_inspect(tmp_path: Path) -> None:
    path = tmp_path / "plain.tflite"
    path.write_bytes(tb.colours_model())
    with pytest.raises(BundleError, match=r"without TFLite metadata.*edge-agent inspect .*plain.tflite "
                                          r"--write-sidecar .*plain.toml"):
        verify_model(path)


def test_broken_metadata_is_a_bundle_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.tflite"
    path.write_bytes(tb.attach_metadata(tb.colours_model(), b"\x08\x00\x00\x00M001" + b"\xff" * 8))
    with pytest.raises(BundleError, match="TFLITE_METADATA is malformed"):
        verify_model(path)
    path.write_bytes(b"not a model at all")
    with pytest.raises(BundleError, match="not a TFLite model"):
        verify_model(path)


def test_metadata_with_an_invalid_field_names_the_metadata(tmp_path: Path) -> None:
    meta = tb.model_metadata([tb.Tensor("image", content=("image", tb.RGB, None), mean=[1.0], std=[0.0])],
                             [tb.Tensor("s")])
    path = tmp_path / "zero.tflite"
    path.write_bytes(tb.attach_metadata(tb.colours_model(), meta))
    with pytest.raises(BundleError, match=r"zero.tflite \(TFLite metadata\): invalid 'preprocess'.*non-zero"):
        _ = verify_model(path).preprocess


# --------------------------------------------------------------------------- hostile input


MODEL = tb.image_classifier("int8")


def parse_everything(data: bytes) -> None:
    """Every reader on ``data``: each either succeeds or raises BundleError."""
    try:
        info = tflite_model.read_model(data)
        tflite_model.read_operators(data)
        meta = tflite_metadata.model_metadata(info)
        if meta is not None:
            tflite_metadata.metadata_labels(data, meta)
        tflite_sidecar.metadata_sidecar(data, info.input_specs(), info.output_specs())
    except BundleError:
        pass


def test_every_truncation_is_a_bundle_error() -> None:
    for end in range(len(MODEL)):
        parse_everything(MODEL[:end])
    for end in range(0, len(MODEL), 7):
        with pytest.raises(BundleError):
            tflite_model.read_model(MODEL[:min(end, 600)])


@pytest.mark.parametrize("data", [b"", b"TFL3", b"\x00" * 8, b"\x00\x00\x00\x00TFL3", b"\xff\xff\xff\xffTFL3",
                                  b"\x08\x00\x00\x00TFL3\x00\x00\x00\x00", b"PK\x03\x04" + b"\x00" * 40])
def test_tiny_garbage(data: bytes) -> None:
    with pytest.raises(BundleError):
        tflite_model.read_model(data)


def _patch_u32(data: bytes, pos: int, value: int) -> bytes:
    return data[:pos] + struct.pack("<I", value) + data[pos + 4:]


def test_offsets_and_lengths_out_of_range() -> None:
    with pytest.raises(BundleError, match="outside"):
        tflite_model.read_model(_patch_u32(MODEL, 0, 10_000_000))  # root offset
    root = struct.unpack_from("<I", MODEL, 0)[0]
    with pytest.raises(BundleError, match=r"outside|bad vtable"):
        tflite_model.read_model(MODEL[:root] + struct.pack("<i", -5_000) + MODEL[root + 4:])  # vtable offset
    # the subgraphs vector (Model slot 2): claim 2**32 - 1 elements
    vtable = root - struct.unpack_from("<i", MODEL, root)[0]
    field = root + struct.unpack_from("<H", MODEL, vtable + 4 + 2 * 2)[0]
    vector = field + struct.unpack_from("<I", MODEL, field)[0]
    with pytest.raises(BundleError, match="runs past the end"):
        tflite_model.read_model(_patch_u32(MODEL, vector, 0xFFFFFFFF))


def test_shared_subtables_cannot_blow_up_the_work() -> None:
    """3000 tensor entries all pointing at one table with 3000 files: 9M reads from 30 kB."""
    b = flatbuffers.Builder(1024)
    name = b.CreateString("labels.txt")
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    file_offset = b.EndObject()
    files = tb._offsets(b, [file_offset] * 3000)
    b.StartObject(7)
    b.PrependUOffsetTRelativeSlot(6, files, 0)
    tensor = b.EndObject()
    tensors = tb._offsets(b, [tensor] * 3000)
    b.StartObject(10)
    b.PrependUOffsetTRelativeSlot(3, tensors, 0)
    subgraph = b.EndObject()
    subgraphs = tb._offsets(b, [subgraph])
    b.StartObject(8)
    b.PrependUOffsetTRelativeSlot(3, subgraphs, 0)
    b.Finish(b.EndObject(), file_identifier=b"M001")
    data = bytes(b.Output())
    assert len(data) < 40_000
    with pytest.raises(BundleError, match="too many elements"):
        tflite_metadata.parse_model_metadata(data)


def test_metadata_without_its_identifier() -> None:
    with pytest.raises(BundleError, match="identifier M001"):
        tflite_metadata.parse_model_metadata(tb.colours_model())


def test_zip_member_with_unsupported_compression() -> None:
    meta = tb.model_metadata([tb.Tensor("image")], [tb.Tensor("scores", files=[tb.File("labels.txt")])])
    stream = io.BytesIO(tb.attach_metadata(tb.colours_model(), meta))
    with zipfile.ZipFile(stream, "a", compression=zipfile.ZIP_BZIP2) as archive:
        archive.writestr("labels.txt", b"a\nb\nc\n")
    with pytest.raises(BundleError, match="unsupported compression"):
        tflite_metadata.associated_file(stream.getvalue(), "labels.txt")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(MODEL) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_fuzz_mutated_bytes(changes: list[tuple[int, int]]) -> None:
    data = bytearray(MODEL)
    for pos, value in changes:
        data[pos] = value
    parse_everything(bytes(data))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_metadata(blob: bytes) -> None:
    with contextlib.suppress(BundleError):
        tflite_metadata.parse_model_metadata(b"\x08\x00\x00\x00M001" + blob)


# --------------------------------------------------------------------------- edge-agent inspect


def run_cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = cli.main(["inspect", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "colours.tflite"
    path.write_bytes(tb.image_classifier("int8"))
    code, out, _ = run_cli(capsys, path)
    assert code == 0
    assert "  0  image  int8  [1, 16, 16, 3]  scale 0.00392157 zero point -128" in out
    assert "  0  scores  int8  [1, 3]  scale 0.00390625 zero point -128" in out
    assert "ops (subgraph 0, 2): MEAN x1, SOFTMAX x1" in out
    assert "quantisation: integer (all 2 ops)" in out
    assert "TFLite metadata: name 'Colour classifier', version 'v2', author 'tests', license 'Apache-2.0'" in out
    assert "input 0 image: image RGB, default size 16x16; mean [0.0] std [255.0]" in out
    assert "labels: 3 (red, green, blue)" in out
    assert "output format: classification (3 class scores, shape [1, 3])" in out
    code, out, _ = run_cli(capsys, path, "--json")
    report = json.loads(out)
    assert code == 0 and report["labels"] == 3 and report["metadata"]["name"] == "Colour classifier"
    assert report["metadata"]["inputs"][0]["content"] == {"color_space": "RGB", "default_size": [16, 16]}
    assert report["sidecar"]["source"] == "metadata"
    assert report["sidecar"]["fields"]["labels"] == ["red", "green", "blue"]


def test_inspect_float_ops_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "plain.tflite"
    path.write_bytes(tb.colours_model("float32"))
    code, out, _ = run_cli(capsys, path, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["ops"] == {"MEAN": 1, "SOFTMAX": 1} and report["quantized"] is False
    assert report["metadata"] is None and report["labels"] is None
    assert report["inputs"][0]["shape"] == [1, 16, 16, 3]
    assert report["output_format"]["task"] == "classify"
    assert report["sidecar"]["source"] == "shapes"


def test_inspect_reports_float_ops_left_in_an_integer_model() -> None:
    ops = tflite_model.read_operators(tb.custom_op_model())
    assert inspect_model._quantisation_line(ops) == "quantisation: integer, but float ops remain: SIN x1"


@pytest.mark.parametrize("kind", ["metadata", "int8", "uint8", "audio"])
def test_write_sidecar_round_trip(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = {"metadata": tb.image_classifier(), "int8": tb.colours_model("int8"),
             "uint8": tb.colours_model("uint8"), "audio": tb.audio_classifier()}[kind]
    path = tmp_path / "m.tflite"
    path.write_bytes(model)
    target = tmp_path / "side.toml"
    code, _, err = run_cli(capsys, path, "--write-sidecar", target)
    assert code == 0 and f"wrote {target}: check it" in err
    data = tomllib.loads(target.read_text())
    loaded = load_model(path, sidecar=target)
    if kind in ("int8", "uint8"):  # from shapes: pixels / 255 (int8 range [0, 1]; uint8 raw pixels)
        assert data["preprocess"]["std"] == [255.0] and "labels" not in data
        assert data["preprocess"].get("mean", [0.0]) == [0.0]
        assert "# labels = " in target.read_text() and "(3)" in target.read_text()
        assert loaded.manifest.name == "m"
    else:
        assert loaded.labels == (["red", "green", "blue"] if kind == "metadata" else ["up", "down"])
        assert data["task"] == ("classify" if kind == "metadata" else "audio_classify")


def test_write_sidecar_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.tflite"
    path.write_bytes(tb.colours_model())
    target = tmp_path / "side.toml"
    target.write_text("keep")
    code, out, err = run_cli(capsys, path, "--write-sidecar", target)
    assert code == 2 and out == "" and err == f"edge-agent: error: {target} exists; use --force to overwrite it\n"
    assert target.read_text() == "keep"
    code, _, _ = run_cli(capsys, path, "--write-sidecar", target, "--force")
    assert code == 0 and tomllib.loads(target.read_text())["task"] == "classify"
    code, _, err = run_cli(capsys, path, "--write-sidecar", tmp_path / "side.json")
    assert code == 2 and "name the file *.toml" in err


@pytest.mark.parametrize("content,message", [
    (None, "not found"),
    (b"garbage, not a flatbuffer", "not a TFLite model"),
    (tb.colours_model()[:300], "malformed"),
    (b"PK\x03\x04" + b"\x00" * 100, "zip archive"),
])
def test_inspect_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None,
                           message: str) -> None:
    path = tmp_path / "bad.tflite"
    if content is not None:
        path.write_bytes(content)
    code, out, err = run_cli(capsys, path)
    assert code == 2 and out == ""
    assert err.startswith("edge-agent: error: ") and message in err and err.count("\n") == 1


def test_inspect_a_model_the_interpreter_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "custom.tflite"
    path.write_bytes(tb.custom_op_model())  # structurally readable, but not runnable
    code, _, err = run_cli(capsys, path)
    assert code == 2 and "the interpreter cannot load this model" in err and err.count("\n") == 1


@given(st.text(max_size=40))
def test_toml_strings_round_trip(text: str) -> None:
    assert tomllib.loads(f"x = {sidecar_toml._toml_value(text)}")["x"] == text


@given(st.text(max_size=20))
def test_toml_keys_round_trip(key: str) -> None:
    assert tomllib.loads(f"{sidecar_toml._toml_key(key)} = 1") == {key: 1}


def test_a_key_ending_in_a_newline_is_quoted() -> None:
    assert sidecar_toml._toml_key("scores") == "scores"
    assert sidecar_toml._toml_key("scores\n") == '"scores\\n"'


def test_toml_values_round_trip() -> None:
    table = {"a": [1.5, -2.0, 1e-7], "b": True, "c": ["q\"uote", "new\nline", "\x7f", "é"], "d": 3,
             "e": [f"label {i}" for i in range(40)]}
    lines: list[str] = []
    sidecar_toml._toml_table(lines, "t", {**table, "sub": {"x": 1}}, ["note"])
    parsed = tomllib.loads("\n".join(lines))
    assert parsed == {"t": {**table, "sub": {"x": 1}}}
