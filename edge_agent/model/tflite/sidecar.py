"""What a model's TFLite Model Metadata says about running it, as sidecar fields.

:func:`metadata_sidecar` gives the same fields a sidecar file gives (see
:mod:`edge_agent.model.loader`), so a model with metadata runs without a sidecar.
"""

from __future__ import annotations

import math
import re
from typing import Any

from edge_agent.errors import BundleError
from edge_agent.model.manifest import TensorSpec
from edge_agent.model.tflite.metadata import (
    AudioProperties,
    ImageProperties,
    TensorMetadata,
    metadata_labels,
    model_metadata,
)
from edge_agent.model.tflite.model import read_model


def _sidecar_name(name: str) -> str | None:
    """A manifest-valid name from free text ("MobileNet V1 (quant)" -> "MobileNet-V1-quant")."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")[:128]
    return cleaned or None


def _image_size(spec: TensorSpec, props: ImageProperties | None) -> tuple[int, int, int]:
    """(width, height, channels) from an NHWC input shape, else the metadata's default size."""
    shape = list(spec.shape)
    if len(shape) == 3:
        shape = [1, *shape]
    if len(shape) != 4:
        raise BundleError(f"input {spec.name!r} has shape {spec.shape}; an image input needs [1, H, W, C]")
    _, height, width, channels = shape
    if (width <= 1 or height <= 1) and props is not None and props.default_size is not None:
        width, height = props.default_size
    return int(width), int(height), int(channels)


def image_normalization(spec: TensorSpec, meta: TensorMetadata | None = None) -> tuple[list[float], list[float]]:
    """mean/std for ``(pixel - mean) / std``, before quantisation with the tensor's own parameters.

    A uint8 input takes raw pixels, as the TFLite Task Library feeds it (it ignores
    NormalizationOptions there): mean = zero point and std = 1 / scale make our
    quantisation step give back exactly the pixel value. Float and int8 inputs use the
    metadata's NormalizationOptions, which are in the 0..255 pixel domain.
    """
    if spec.dtype == "uint8" and spec.scale > 0:
        return [float(spec.zero_point)], [float(f"{1.0 / spec.scale:.7g}")]  # 7 digits: still exact per pixel
    meta = meta or TensorMetadata()
    return list(meta.mean or (0.0,)), list(meta.std or (1.0,))


def _image_task(outputs: list[TensorSpec], n_labels: int, what: str) -> tuple[str, dict[str, Any]]:
    """(task, [output] keys) of an image model with metadata.

    Four outputs shaped like boxes, classes, scores and count are the Task Library's SSD
    detector (TFLite_Detection_PostProcess); one output is its classifier unless the shape is
    a YOLO head. Raw boxes and anchors need settings only a sidecar gives.
    """
    from edge_agent.tasks.formats import recognise_outputs

    guess = recognise_outputs(outputs, n_labels)
    if guess.detection_format in ("tflite_postprocess", "yolo"):
        return "detect", dict(guess.output)
    if len(outputs) == 1:
        return "classify", {}
    raise BundleError(
        f"{what}: the TFLite metadata describes an image model whose outputs look like {guess.summary}; "
        "write a sidecar (`edge-agent inspect MODEL --write-sidecar FILE` starts one)"
    )


def metadata_sidecar(model_bytes: bytes, inputs: list[TensorSpec], outputs: list[TensorSpec],
                     what: str = "model") -> dict[str, Any] | None:
    """Sidecar fields (name, version, task, labels, preprocess, output) from the model's TFLite
    Model Metadata; None when the model has no metadata.

    The task follows the Task Library's model kinds: an image input with one output is
    ``classify``; with four outputs (boxes, classes, scores, count of
    ``TFLite_Detection_PostProcess``) it is ``detect`` with ``tflite_postprocess``; an audio
    input is ``audio_classify`` on the raw waveform.

    Raises:
        BundleError: malformed model or metadata, a missing labels file, or metadata that
            does not say how to run the model.
    """
    metadata = model_metadata(read_model(model_bytes, what), what)
    if metadata is None:
        return None
    if not inputs or not outputs:
        raise BundleError(f"{what}: the model has no input or no output tensor")
    sidecar: dict[str, Any] = {}
    name = _sidecar_name(metadata.name)
    if name:
        sidecar["name"] = name
    if metadata.version:
        sidecar["version"] = metadata.version[:64]
    labels = metadata_labels(model_bytes, metadata, what)
    in_meta = metadata.inputs[0] if metadata.inputs else TensorMetadata()
    content = in_meta.content
    spec = inputs[0]
    output: dict[str, Any] = {}
    thresholds = [t.score_threshold for t in metadata.outputs if t.score_threshold is not None]
    if thresholds and 0.0 <= thresholds[0] <= 1.0:
        output["score_threshold"] = thresholds[0]
    if isinstance(content, AudioProperties):
        samples = math.prod(d for d in spec.shape if d > 0)
        rate = content.sample_rate or 16000
        channels = max(1, content.channels)
        preprocess: dict[str, Any] = {
            "kind": "audio", "feature": "waveform", "sample_rate": rate,
            "window_s": samples / channels / rate, "hop_s": min(0.25, samples / channels / rate),
        }
        if rate / 2 < 7600:  # the default log-mel band would exceed Nyquist (unused for waveform)
            preprocess["fmax"] = rate / 2
        task = "audio_classify"
    elif isinstance(content, ImageProperties) or len(spec.shape) in (3, 4):
        props = content if isinstance(content, ImageProperties) else None
        width, height, channels = _image_size(spec, props)
        gray = (props is not None and props.color_space == "GRAYSCALE") or channels == 1
        mean, std = image_normalization(spec, in_meta)
        preprocess = {"kind": "image", "width": width, "height": height, "channels": 1 if gray else 3,
                      "color": "gray" if gray else "rgb", "mean": mean, "std": std}
        task, formats = _image_task(outputs, len(labels or ()), what)
        output = {**formats, **output}
    else:
        raise BundleError(
            f"{what}: the TFLite metadata does not describe an image or audio input (input shape "
            f"{spec.shape}); write a sidecar (`edge-agent inspect MODEL --write-sidecar FILE` starts one)"
        )
    sidecar["task"] = task
    if labels is not None:
        sidecar["labels"] = labels
    sidecar["preprocess"] = preprocess
    if output:
        sidecar["output"] = output
    return sidecar
