"""Raw PCM on stdin: signed 16-bit little-endian mono, e.g.
``arecord -f S16_LE -r 16000 -c 1 | edge-agent run --source - …``.

Not live by default: the pipe gives back-pressure, so audio piped from a file
is analysed completely; set ``source.live = true`` to drop old windows instead.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import BinaryIO

import numpy as np

from edge_agent.preprocess import pcm_to_float, resample
from edge_agent.sources.base import AudioWindow, Item, SlidingWindower, Source


class StdinPcmSource(Source):
    kind = "audio"
    type_name = "stdin"

    def __init__(
        self, input_rate: int, model_rate: int, window: int, hop: int,
        stream: BinaryIO | None = None, live: bool = False,
    ) -> None:
        super().__init__()
        self.live = live
        self._stream = stream if stream is not None else sys.stdin.buffer
        self._input_rate, self._model_rate = input_rate, model_rate
        self._windower = SlidingWindower(window, hop, model_rate)
        # Read one hop at a time (at the input rate) so windows come out promptly.
        self._chunk_bytes = max(2, round(hop * input_rate / model_rate)) * 2
        self._pending: deque[tuple[float, np.ndarray]] = deque()
        self._carry = b""
        self._ended = False
        self._index = 0

    def start(self) -> None:
        self._set_state("reading")

    def read(self) -> Item | None:
        start = time.perf_counter()
        while not self._pending:
            if self._stop.is_set() or self._ended:
                self._set_state("ended")
                return None
            data = self._stream.read(self._chunk_bytes)
            if not data:
                self._ended = True
                self._pending.extend(self._windower.flush())
                continue
            data = self._carry + data
            usable = len(data) - len(data) % 2
            self._carry = data[usable:]
            samples = resample(pcm_to_float(data[:usable], 2, 1), self._input_rate, self._model_rate)
            self._pending.extend(self._windower.push(samples))
        t_start, samples = self._pending.popleft()
        item = AudioWindow(self._index, time.time(), t_start, samples, time.perf_counter() - start)
        self._index += 1
        return item
