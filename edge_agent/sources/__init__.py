"""Capture sources, one backend per module, created by type name.

``detect_source_type`` turns the ``--source`` string into a type:
an integer or ``/dev/video*`` → camera, ``picamera2[:N]`` → Pi camera,
``rtsp://`` / ``http(s)://`` → stream, ``exec:COMMAND`` → MJPEG from a command,
a directory → folder (images), ``*.wav`` (or a comma list of them) → wav,
``-`` / ``stdin`` → raw PCM on stdin, ``mic`` → microphone, else a video file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from edge_agent.config import SourceSection
from edge_agent.errors import SourceError
from edge_agent.model.manifest import AudioPreprocess
from edge_agent.sources.base import AudioWindow, Frame, Item, Source

__all__ = ["SOURCES", "AudioWindow", "Frame", "Item", "Source", "create_source", "detect_source_type"]

AUDIO_TYPES = frozenset({"wav", "stdin", "mic"})


def detect_source_type(uri: str) -> str:
    """Source type for a ``--source`` string (see the module docstring)."""
    text = uri.strip()
    lower = text.lower()
    if re.fullmatch(r"\d+", text) or lower.startswith("/dev/video"):
        return "camera"
    if lower == "picamera2" or lower.startswith("picamera2:"):
        return "picamera2"
    if lower.startswith("exec:"):
        return "exec"
    if lower.startswith(("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")):
        return "stream"
    if lower in ("-", "stdin"):
        return "stdin"
    if lower in ("mic", "microphone") or lower.startswith("mic:"):
        return "mic"
    if all(part.strip().lower().endswith(".wav") for part in text.split(",")):
        return "wav"
    if Path(text).is_dir():
        return "folder"
    return "video"


def _camera(uri: str, cfg: SourceSection, audio: AudioPreprocess | None) -> Source:
    from edge_agent.sources.camera import CameraSource

    return CameraSource(uri, cfg.width, cfg.height, cfg.reconnect_min_s, cfg.reconnect_max_s)


def _video(uri: str, cfg: SourceSection, audio: AudioPreprocess | None) -> Source:
    from edge_agent.sources.video import VideoFileSource

    return VideoFileSource(uri, loop=cfg.loop)


def _stream(uri: str, cfg: SourceSection, audio: AudioPreprocess | None) -> Source:
    from edge_agent.sources.stream import StreamSource

    return StreamSource(uri, cfg.read_timeout_s, cfg.reconnect_min_s, cfg.reconnect_max_s,
                        cfg.stall_timeout_s, cfg.max_part_bytes, cfg.max_image_pixels)


def _exec(uri: str, cfg: SourceSection, audio: AudioPreprocess | None) -> Source:
    from edge_agent.sources.command import CommandSource

    return CommandSource(uri, cfg.read_timeout_s, cfg.reconnect_min_s, cfg.reconnect_max_s,
                         cfg.stall_timeout_s, cfg.max_part_bytes, cfg.max_image_pixels)


def _picamera2(uri: str, cfg: SourceSection, audio: AudioPreprocess | None) -> Source:
    from edge_agent.sources.picamera import Picamera2Source

    return Picamera2Source(uri, cfg.width, cfg.height, cfg.reconnect_min_s, cfg.reconnect_max_s)


def _folder(uri: str, cfg: SourceSection, audio: AudioPreprocess | None) -> Source:
    from edge_agent.sources.folder import FolderSource

    return FolderSource(uri, loop=cfg.loop, max_pixels=cfg.max_image_pixels)


def _need_audio(audio: AudioPreprocess | None, kind: str) -> AudioPreprocess:
    if audio is None:
        raise SourceError(f"source type {kind!r} gives audio but the model takes images")
    return audio


def _wav(uri: str, cfg: SourceSection, audio: AudioPreprocess | None) -> Source:
    from edge_agent.sources.wav import WavSource

    spec = _need_audio(audio, "wav")
    paths = [p.strip() for p in uri.split(",") if p.strip()]
    return WavSource(paths, spec.sample_rate, spec.window_samples, spec.hop_samples)


def _stdin(uri: str, cfg: SourceSection, audio: AudioPreprocess | None) -> Source:
    from edge_agent.sources.stdin import StdinPcmSource

    spec = _need_audio(audio, "stdin")
    rate = cfg.sample_rate or spec.sample_rate
    return StdinPcmSource(rate, spec.sample_rate, spec.window_samples, spec.hop_samples, live=bool(cfg.live))


def _mic(uri: str, cfg: SourceSection, audio: AudioPreprocess | None) -> Source:
    from edge_agent.sources.mic import MicrophoneSource

    spec = _need_audio(audio, "mic")
    rate = cfg.sample_rate or spec.sample_rate
    device = uri.partition(":")[2] or None
    return MicrophoneSource(rate, spec.sample_rate, spec.window_samples, spec.hop_samples, device)


SourceFactory = Callable[[str, SourceSection, AudioPreprocess | None], Source]
SOURCES: dict[str, SourceFactory] = {
    "camera": _camera,
    "video": _video,
    "stream": _stream,
    "exec": _exec,
    "picamera2": _picamera2,
    "folder": _folder,
    "wav": _wav,
    "stdin": _stdin,
    "mic": _mic,
}


def create_source(cfg: SourceSection, audio: AudioPreprocess | None = None) -> Source:
    """Create (not start) the configured source; ValueError for an unknown type."""
    if not cfg.uri:
        raise SourceError(
            "no source given: use --source (camera index, picamera2, file, folder, URL, exec:COMMAND, *.wav, -, mic)")
    kind = detect_source_type(cfg.uri) if cfg.type == "auto" else cfg.type
    try:
        factory = SOURCES[kind]
    except KeyError:
        raise ValueError(f"unknown source type {kind!r}; choose one of {sorted(SOURCES)}") from None
    if kind not in AUDIO_TYPES and audio is not None:
        raise SourceError(f"source {cfg.uri!r} gives images but the model takes audio (use a .wav, '-' or 'mic')")
    source = factory(cfg.uri, cfg, audio)
    if cfg.live is not None and kind not in ("stdin",):
        source.live = cfg.live
    return source
