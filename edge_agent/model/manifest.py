"""Typed bundle manifest: the contract between converter, agent and deploy tools.

The manifest says everything the device needs to run a model without guessing:
the input tensor and its quantisation, the preprocessing that produced the
calibration data, how to decode the outputs, checksums, and golden test vectors
for the on-device smoke test. The same model validates a plain ``.tflite``
sidecar file (see :func:`edge_agent.model.bundle.load_model_source`).
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np

from edge_agent.schema import Field, FieldError, Schema, validate_as
from edge_agent.util.fs import SHA256_HEX_RE

SCHEMA_VERSION = 1

DType = Literal["int8", "uint8", "float32", "int16", "int32"]
Task = Literal["classify", "detect", "audio_classify"]


class TensorSpec(Schema, frozen=True):
    """One input or output tensor as the interpreter reports it."""

    name: str = ""
    shape: list[int] = Field(description="Tensor shape including the batch dimension.")
    dtype: DType
    scale: float = Field(default=0.0, description="Quantisation scale; 0 for float tensors.")
    zero_point: int = Field(default=0, description="Quantisation zero point.")
    layout: str = Field(default="", description="NHWC for images, NTF (time x features) for audio.")


class ImagePreprocess(Schema, frozen=True):
    """How a camera frame becomes the model input (before quantisation)."""

    kind: Literal["image"] = "image"
    width: int = Field(gt=0, le=8192)
    height: int = Field(gt=0, le=8192)
    channels: Literal[1, 3] = 3
    resize: Literal["stretch", "letterbox", "crop"] = "stretch"
    color: Literal["rgb", "bgr", "gray"] = "rgb"
    mean: list[float] = Field(default_factory=lambda: [0.0])
    std: list[float] = Field(default_factory=lambda: [1.0])
    invert: bool = Field(default=False, description="Use 255 - pixel (dark strokes on light paper).")
    pad_value: int = Field(default=0, ge=0, le=255,
                           description="Grey level of the letterbox border (Ultralytics pads with 114).")

    def _check(self) -> None:
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise ValueError(f"{name} needs 1 or {self.channels} values, got {len(values)}")
        if any(s == 0 for s in self.std):
            raise ValueError("std values must be non-zero")
        if self.color == "gray" and self.channels != 1:
            raise ValueError("color 'gray' needs channels = 1")
        if self.color != "gray" and self.channels != 3:
            raise ValueError("channels = 1 needs color 'gray'")


class AudioPreprocess(Schema, frozen=True):
    """How a window of audio samples becomes the model input (before quantisation)."""

    kind: Literal["audio"] = "audio"
    sample_rate: int = Field(default=16000, gt=0, le=192000)
    window_s: float = Field(default=1.0, gt=0, le=60, description="Length of one model input in seconds.")
    hop_s: float = Field(default=0.25, gt=0, le=60, description="Step between windows on the device.")
    feature: Literal["waveform", "logmel", "mfcc"] = "logmel"
    frame_length: int = Field(default=480, gt=0, description="STFT window length in samples.")
    frame_step: int = Field(default=320, gt=0, description="STFT hop in samples.")
    fft_length: int = Field(default=512, gt=0)
    n_mels: int = Field(default=40, gt=0, le=512)
    n_mfcc: int = Field(default=13, gt=0, le=512)
    fmin: float = Field(default=20.0, ge=0)
    fmax: float = Field(default=7600.0, gt=0)
    log_offset: float = Field(default=1e-6, gt=0)

    def _check(self) -> None:
        if self.fft_length < self.frame_length:
            raise ValueError("fft_length must be >= frame_length")
        if self.fmax > self.sample_rate / 2:
            raise ValueError("fmax must be at most half the sample rate")
        if self.fmin >= self.fmax:
            raise ValueError("fmin must be below fmax")
        if self.feature == "mfcc" and self.n_mfcc > self.n_mels:
            raise ValueError("n_mfcc must be <= n_mels")
        if self.feature != "waveform" and self.frame_length > self.window_samples:
            raise FieldError("frame_length", f"frame_length {self.frame_length} is longer than the window "
                                             f"({self.window_samples} samples); shorten it or lengthen window_s")

    @property
    def window_samples(self) -> int:
        return round(self.window_s * self.sample_rate)

    @property
    def hop_samples(self) -> int:
        return max(1, round(self.hop_s * self.sample_rate))


Preprocess = ImagePreprocess | AudioPreprocess  # tagged by `kind`


def parse_preprocess(data: Any) -> Preprocess:
    """A preprocess section (``kind = "image"`` or ``"audio"``); raises :class:`ValidationError`."""
    result: Preprocess = validate_as(Preprocess, data)
    return result


Activation = Literal["none", "softmax", "sigmoid"]
DetectionFormat = Literal["tflite_postprocess", "raw_boxes", "yolo", "ssd_anchors"]


class SsdAnchors(Schema, frozen=True):
    """Anchor generation, with the option names of MediaPipe's ``SsdAnchorsCalculatorOptions``
    so they can be copied from a model's graph file."""

    num_layers: int = Field(gt=0, le=32)
    min_scale: float = Field(gt=0)
    max_scale: float = Field(gt=0)
    input_size_width: int = Field(gt=0, le=8192)
    input_size_height: int = Field(gt=0, le=8192)
    anchor_offset_x: float = Field(default=0.5, ge=0, le=1)
    anchor_offset_y: float = Field(default=0.5, ge=0, le=1)
    strides: list[int] = Field(default_factory=list, max_length=32)
    feature_map_width: list[int] = Field(default_factory=list, max_length=32)
    feature_map_height: list[int] = Field(default_factory=list, max_length=32)
    aspect_ratios: list[float] = Field(default_factory=lambda: [1.0], max_length=32)
    fixed_anchor_size: bool = False
    interpolated_scale_aspect_ratio: float = Field(default=1.0, ge=0)
    reduce_boxes_in_lowest_layer: bool = False

    def _check(self) -> None:
        if self.feature_map_width or self.feature_map_height:
            if len(self.feature_map_width) != self.num_layers or len(self.feature_map_height) != self.num_layers:
                raise FieldError("feature_map_width",
                                 "feature_map_width and feature_map_height need num_layers values each")
        elif len(self.strides) != self.num_layers:
            raise FieldError("strides", f"needs num_layers = {self.num_layers} values, got {len(self.strides)}")
        if any(s <= 0 for s in self.strides) or any(v <= 0 for v in (*self.feature_map_width,
                                                                     *self.feature_map_height)):
            raise FieldError("strides", "strides and feature map sizes must be positive")
        if any(r <= 0 for r in self.aspect_ratios):
            raise FieldError("aspect_ratios", "values must be positive")


class BoxDecoding(Schema, frozen=True):
    """Raw SSD box decoding, with the option names of MediaPipe's
    ``TensorsToDetectionsCalculatorOptions``."""

    num_coords: int = Field(default=4, ge=4, le=4096)
    box_coord_offset: int = Field(default=0, ge=0)
    keypoint_coord_offset: int = Field(default=0, ge=0)
    num_keypoints: int = Field(default=0, ge=0, le=1024)
    num_values_per_keypoint: int = Field(default=2, ge=2)
    x_scale: float = Field(default=1.0, gt=0)
    y_scale: float = Field(default=1.0, gt=0)
    w_scale: float = Field(default=1.0, gt=0)
    h_scale: float = Field(default=1.0, gt=0)
    sigmoid_score: bool = False
    score_clipping_thresh: float | None = Field(default=None, gt=0)
    reverse_output_order: bool = False
    apply_exponential_on_box_size: bool = False
    num_boxes: int | None = Field(default=None, gt=0, description="Checked against the model when given.")
    num_classes: int | None = Field(default=None, gt=0, description="Checked against the model when given.")

    def _check(self) -> None:
        if self.box_coord_offset + 4 > self.num_coords:
            raise FieldError("box_coord_offset", f"box_coord_offset + 4 exceeds num_coords = {self.num_coords}")
        end = self.keypoint_coord_offset + self.num_keypoints * self.num_values_per_keypoint
        if self.num_keypoints and end > self.num_coords:
            raise FieldError("num_keypoints", f"the keypoints need {end} coordinates, num_coords is "
                                              f"{self.num_coords}")


class OutputSpec(Schema, frozen=True):
    """How raw output tensors become results."""

    labels: list[str] = Field(default_factory=list)
    score_threshold: float = Field(default=0.0, ge=0.0, le=1.0)
    top_k: int = Field(default=3, ge=1, le=1000)
    activation: Activation = Field(
        default="none", description="Applied to raw scores: softmax (logits of one class), sigmoid "
                                    "(multi-label logits) or none (scores already).")
    apply_softmax: bool = Field(default=False, description="Legacy form of activation = 'softmax'.")
    detection_format: DetectionFormat | None = None
    box_format: Literal["yxyx", "xyxy", "cxcywh"] = "yxyx"
    iou_threshold: float = Field(default=0.5, gt=0.0, le=1.0)
    max_detections: int = Field(default=25, ge=1, le=1000)
    anchors: SsdAnchors | None = Field(default=None, description="ssd_anchors: how to generate anchors.")
    box_decoding: BoxDecoding | None = Field(default=None, description="ssd_anchors: how to decode boxes.")
    # audio_classify: keyword spotting over consecutive windows, or one event per window
    audio_events: Literal["keyword", "window"] = "keyword"
    smoothing_windows: int = Field(default=3, ge=1, le=100)
    refractory_s: float = Field(default=0.75, ge=0.0, le=60)
    background_labels: list[str] = Field(
        default_factory=list, description="Labels never reported as events (silence, noise)."
    )

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        # Legacy `apply_softmax = true` means activation "softmax"; kept only to report a conflict.
        if data.get("apply_softmax") is True and data.get("activation", "softmax") == "softmax":
            data["activation"] = "softmax"
            del data["apply_softmax"]
        elif data.get("apply_softmax") is False:
            del data["apply_softmax"]
        return data

    def _check(self) -> None:
        if self.detection_format == "ssd_anchors" and self.anchors is None:
            raise FieldError("anchors", "detection_format 'ssd_anchors' needs an [output.anchors] table "
                                        "(MediaPipe SsdAnchorsCalculator options)")
        if self.detection_format != "ssd_anchors" and (self.anchors or self.box_decoding):
            raise FieldError("anchors" if self.anchors else "box_decoding",
                             "[output.anchors] and [output.box_decoding] need detection_format = 'ssd_anchors'")
        if self.apply_softmax:
            raise FieldError("apply_softmax", f"conflicts with activation = {self.activation!r}; remove apply_softmax")


class GoldenVector(Schema, frozen=True):
    """A model input with the outputs it must produce, for the on-device smoke test.

    Tensors are stored as base64 of their raw little-endian bytes to keep the
    manifest small and exact. ``expected_b64`` is output 0; a model with several
    outputs (detectors) may give outputs 1..n in ``more_expected_b64``, each with
    its own tolerance in ``more_atol`` (``atol`` when that list is empty).
    """

    input_b64: str
    expected_b64: str
    expected_top1: int
    atol: float = Field(gt=0, description="Tolerance on dequantised outputs.")
    more_expected_b64: list[str] = Field(
        default_factory=list, max_length=63, description="Expected outputs 1..n of a multi-output model."
    )
    more_atol: list[float] = Field(
        default_factory=list, max_length=63, description="Tolerance of each of outputs 1..n (default: atol)."
    )

    def _check(self) -> None:
        if self.more_atol and len(self.more_atol) != len(self.more_expected_b64):
            raise FieldError("more_atol", f"needs one value per entry of more_expected_b64 "
                                          f"({len(self.more_expected_b64)}), got {len(self.more_atol)}")
        if any(not tol > 0 for tol in self.more_atol):
            raise FieldError("more_atol", "values must be > 0")

    @staticmethod
    def encode(array: np.ndarray) -> str:
        return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")

    def input_array(self, spec: TensorSpec) -> np.ndarray:
        return _decode(self.input_b64, spec)

    def expected_array(self, spec: TensorSpec) -> np.ndarray:
        return _decode(self.expected_b64, spec)

    def expected_arrays(self, specs: list[TensorSpec]) -> list[np.ndarray]:
        """Every expected output this vector gives (output 0 first), decoded with the specs of the outputs.

        Raises:
            ValueError: more expected outputs than specs, or a size that does not fit its tensor.
        """
        encoded = [self.expected_b64, *self.more_expected_b64]
        if len(encoded) > len(specs):
            raise ValueError(f"golden vector gives {len(encoded)} outputs, the manifest lists {len(specs)}")
        return [_decode(b64, spec) for b64, spec in zip(encoded, specs, strict=False)]

    @property
    def tolerances(self) -> list[float]:
        """Tolerance of each expected output, output 0 first."""
        return [self.atol, *(self.more_atol or [self.atol] * len(self.more_expected_b64))]


def _decode(b64: str, spec: TensorSpec) -> np.ndarray:
    raw = base64.b64decode(b64.encode("ascii"), validate=True)
    array = np.frombuffer(raw, dtype=np.dtype(spec.dtype))
    expected = int(np.prod(spec.shape))
    if array.size != expected:
        raise ValueError(f"golden vector has {array.size} values, tensor needs {expected}")
    return array.reshape(spec.shape).copy()


def _default_output() -> OutputSpec:
    return OutputSpec()


class ModelInfo(Schema, frozen=True):
    file: str = "model.tflite"
    sha256: str = Field(pattern=SHA256_HEX_RE.pattern)
    size_bytes: int = Field(ge=0)


class Manifest(Schema, frozen=True):
    """The bundle manifest (``manifest.json``)."""

    schema_version: int = SCHEMA_VERSION
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str = Field(min_length=1, max_length=64)
    task: Task
    created_utc: str = ""
    model: ModelInfo
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    preprocess: Preprocess
    output: OutputSpec = Field(default_factory=_default_output)
    files: dict[str, str] = Field(
        default_factory=dict, description="sha256 of every other file in the bundle."
    )
    min_runtime_version: str = "0.1.0"
    golden: list[GoldenVector] = Field(default_factory=list)
    latency_budget_ms: float = Field(
        default=0.0, ge=0, description="Smoke-test budget per inference; 0 disables the check."
    )
    converter: dict[str, str] = Field(
        default_factory=dict, description="Converter, TensorFlow and LiteRT versions."
    )
    validation: dict[str, Any] = Field(
        default_factory=dict, description="Headline validation figures (full report in report.json)."
    )

    def _check(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {self.schema_version} is not supported (this agent reads "
                f"{SCHEMA_VERSION}); upgrade the agent or re-convert the model"
            )
        if self.task == "audio_classify" and self.preprocess.kind != "audio":
            raise ValueError("task audio_classify needs an audio preprocess section")
        if self.task in ("classify", "detect") and self.preprocess.kind != "image":
            raise ValueError(f"task {self.task} needs an image preprocess section")
        if self.task == "detect" and self.output.detection_format is None:
            raise ValueError("task detect needs output.detection_format")

    @property
    def short_sha(self) -> str:
        return self.model.sha256[:12]
