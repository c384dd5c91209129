"""Live microphone through the optional ``sounddevice`` package (PortAudio).

Install it with ``pip install 'edge-infer[audio]'`` (and ``libportaudio2``).
"""

from __future__ import annotations

import queue
import time
from collections import deque
from typing import Any

import numpy as np

from edge_agent.errors import SourceError
from edge_agent.preprocess import resample
from edge_agent.sources.base import AudioWindow, Item, SlidingWindower, Source


class MicrophoneSource(Source):
    kind = "audio"
    type_name = "mic"
    live = True

    def __init__(self, input_rate: int, model_rate: int, window: int, hop: int, device: str | None = None) -> None:
        super().__init__()
        self._input_rate, self._model_rate = input_rate, model_rate
        self._windower = SlidingWindower(window, hop, model_rate)
        self._blocksize = max(1, round(hop * input_rate / model_rate))
        self._device = device
        self._chunks: queue.Queue[np.ndarray] = queue.Queue(maxsize=64)
        self._pending: deque[tuple[float, np.ndarray]] = deque()
        self._stream: Any = None
        self._index = 0
        self.overflows = 0

    def start(self) -> None:
        try:
            import sounddevice
        except ImportError as exc:
            raise SourceError(
                "the microphone source needs the optional 'sounddevice' package: "
                "pip install 'edge-infer[audio]' (and apt install libportaudio2)"
            ) from exc
        except OSError as exc:  # sounddevice raises OSError when PortAudio is missing
            raise SourceError(f"sounddevice cannot load PortAudio: {exc}; apt install libportaudio2") from exc

        def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            if status:
                self.overflows += 1
            try:
                self._chunks.put_nowait(indata[:, 0].copy())
            except queue.Full:
                self.overflows += 1

        try:
            self._stream = sounddevice.InputStream(
                samplerate=self._input_rate, channels=1, dtype="float32",
                blocksize=self._blocksize, device=self._device, callback=callback,
            )
            self._stream.start()
        except Exception as exc:  # PortAudioError has no stable import path
            raise SourceError(f"cannot open the microphone: {exc}") from exc
        self._set_state("connected")

    def read(self) -> Item | None:
        start = time.perf_counter()
        while not self._pending:
            if self._stop.is_set():
                return None
            try:
                chunk = self._chunks.get(timeout=0.5)
            except queue.Empty:
                continue
            self._pending.extend(self._windower.push(resample(chunk, self._input_rate, self._model_rate)))
        t_start, samples = self._pending.popleft()
        item = AudioWindow(self._index, time.time(), t_start, samples, time.perf_counter() - start)
        self._index += 1
        return item

    def state(self) -> dict[str, Any]:
        state = super().state()
        state["overflows"] = self.overflows
        return state

    def close(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None
