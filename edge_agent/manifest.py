"""Typed bundle manifest: the contract between converter, agent and deploy tools.

The manifest says everything the device needs to run a model without guessing:
the input tensor and its quantisation, the preprocessing that produced the
calibration data, how to decode the outputs, checksums, and golden test vectors
for the on-device smoke test. The same model validates a plain ``.tflite``
sidecar file (see :func:`edge_agent.bundle.load_model_source`).
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np

from edge_agent.schema import Field, Schema, validate_as

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


class OutputSpec(Schema, frozen=True):
    """How raw output tensors become results."""

    labels: list[str] = Field(default_factory=list)
    score_threshold: float = Field(default=0.0, ge=0.0, le=1.0)
    top_k: int = Field(default=3, ge=1, le=1000)
    apply_softmax: bool = Field(default=False, description="Outputs are logits: apply softmax.")
    detection_format: Literal["tflite_postprocess", "raw_boxes"] | None = None
    box_format: Literal["yxyx", "xyxy", "cxcywh"] = "yxyx"
    iou_threshold: float = Field(default=0.5, gt=0.0, le=1.0)
    max_detections: int = Field(default=25, ge=1, le=1000)
    # audio_classify: smoothing over consecutive windows and a refractory period
    smoothing_windows: int = Field(default=3, ge=1, le=100)
    refractory_s: float = Field(default=0.75, ge=0.0, le=60)
    background_labels: list[str] = Field(
        default_factory=list, description="Labels never reported as events (silence, noise)."
    )


class GoldenVector(Schema, frozen=True):
    """A model input with the output it must produce, for the on-device smoke test.

    Tensors are stored as base64 of their raw little-endian bytes to keep the
    manifest small and exact.
    """

    input_b64: str
    expected_b64: str
    expected_top1: int
    atol: float = Field(gt=0, description="Tolerance on dequantised outputs.")

    @staticmethod
    def encode(array: np.ndarray) -> str:
        return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")

    def input_array(self, spec: TensorSpec) -> np.ndarray:
        return _decode(self.input_b64, spec)

    def expected_array(self, spec: TensorSpec) -> np.ndarray:
        return _decode(self.expected_b64, spec)


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
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
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
