"""WAV file(s): read whole, resampled to the model rate, cut into sliding windows.

Several files play one after another; ``t_start_s`` counts from the start of
the first file. The tail of each file is covered by one zero-padded window.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import numpy as np

from edge_agent.errors import PreprocessError, SourceError
from edge_agent.preprocess import read_wav, resample
from edge_agent.sources.base import AudioWindow, Item, SlidingWindower, Source


class WavSource(Source):
    kind = "audio"
    type_name = "wav"
    live = False

    def __init__(self, paths: list[str], sample_rate: int, window: int, hop: int) -> None:
        super().__init__()
        self._paths = [Path(p) for p in paths]
        self._rate, self._window, self._hop = sample_rate, window, hop
        self._pending: deque[tuple[float, np.ndarray]] = deque()
        self._file = 0
        self._offset_s = 0.0
        self._index = 0

    def start(self) -> None:
        for path in self._paths:
            if not path.is_file():
                raise SourceError(f"WAV file {path} not found")
        self._load_next()  # decode errors of the first file show at start, not mid-run
        self._set_state("reading")

    def _load_next(self) -> bool:
        if self._file >= len(self._paths):
            return False
        path = self._paths[self._file]
        self._file += 1
        try:
            samples, rate = read_wav(path)
        except PreprocessError as exc:
            raise SourceError(str(exc)) from exc
        samples = resample(samples, rate, self._rate)
        windower = SlidingWindower(self._window, self._hop, self._rate)
        windows = windower.push(samples) + windower.flush()
        for t_start, window in windows:
            self._pending.append((self._offset_s + t_start, window))
        self._offset_s += samples.size / self._rate
        return True

    def read(self) -> Item | None:
        start = time.perf_counter()
        while not self._pending:
            if self._stop.is_set() or not self._load_next():
                self._set_state("ended")
                return None
        t_start, samples = self._pending.popleft()
        item = AudioWindow(self._index, time.time(), t_start, samples, time.perf_counter() - start)
        self._index += 1
        return item
