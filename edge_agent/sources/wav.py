"""WAV file(s): streamed in bounded chunks, resampled to the model rate, cut into sliding windows.

Several files play one after another; ``t_start_s`` counts from the start of
the first file. The tail of each file is covered by one zero-padded window.
Each file's header (rate, channels, sample width) is checked before a sample
of it is read, the first one's at ``start()``, so a header cannot make the agent
allocate what it declares (a rate of 1 Hz resampled to 16 kHz is a 16000-fold copy).
"""

from __future__ import annotations

import time
import wave
from collections import deque
from pathlib import Path

import numpy as np

from edge_agent.errors import PreprocessError, SourceError
from edge_agent.preprocess import pcm_to_float, wav_header_problem
from edge_agent.sources.base import AudioWindow, Item, SlidingWindower, Source, StreamResampler

CHUNK_FRAMES = 16384  # frames read at a time: at most 512 KiB of 8-channel 32-bit PCM
FIX = "convert it, e.g. `ffmpeg -i IN -ar 16000 -ac 1 -sample_fmt s16 OUT.wav`"


def open_wav(path: Path) -> wave.Wave_read:
    """``path`` opened for reading, its header checked; SourceError with one line otherwise."""
    try:
        handle = wave.open(str(path), "rb")  # noqa: SIM115 - handed open to the caller
    except FileNotFoundError as exc:
        raise SourceError(f"WAV file {path} not found") from exc
    except OSError as exc:
        raise SourceError(f"cannot read WAV file {path}: {exc.strerror or exc}") from exc
    except (wave.Error, EOFError, ValueError) as exc:
        raise SourceError(f"{path} is not a PCM WAV file ({exc or 'truncated header'}); {FIX}") from exc
    problem = wav_header_problem(handle.getframerate(), handle.getnchannels(), handle.getsampwidth())
    if problem is not None:
        handle.close()
        raise SourceError(f"WAV file {path}: {problem}; {FIX}")
    return handle


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
        self._handle: wave.Wave_read | None = None
        self._resampler: StreamResampler | None = None
        self._windower: SlidingWindower | None = None
        self._offset_s = 0.0  # start of the current file in the stream
        self._index = 0

    def start(self) -> None:
        for path in self._paths:
            if not path.is_file():
                raise SourceError(f"WAV file {path} not found")
        self._open_next()  # the first file's header errors show at start, not mid-run
        self._set_state("reading")

    def _open_next(self) -> bool:
        if self._file >= len(self._paths):
            return False
        self._handle = open_wav(self._paths[self._file])
        self._file += 1
        self._resampler = StreamResampler(self._handle.getframerate(), self._rate)
        self._windower = SlidingWindower(self._window, self._hop, self._rate)
        return True

    def _read_chunk(self) -> bool:
        """Window the next chunk of the current file (opening the next file as needed); False at the end."""
        if self._handle is None and not self._open_next():
            return False
        assert self._handle is not None and self._resampler is not None and self._windower is not None
        try:
            raw = self._handle.readframes(CHUNK_FRAMES)
            samples = pcm_to_float(raw, self._handle.getsampwidth(), self._handle.getnchannels())
        except (OSError, EOFError, wave.Error, PreprocessError) as exc:
            raise SourceError(f"cannot read WAV file {self._paths[self._file - 1]}: {exc}") from exc
        if raw:
            windows = self._windower.push(self._resampler.push(samples))
        else:  # end of this file: its last samples, one zero-padded tail window, then the next file
            windows = self._windower.push(self._resampler.flush()) + self._windower.flush()
        self._pending.extend((self._offset_s + t_start, window) for t_start, window in windows)
        if not raw:
            self._offset_s += self._resampler.produced / self._rate
            self._handle.close()
            self._handle = None
        return True

    def read(self) -> Item | None:
        start = time.perf_counter()
        while not self._pending:
            if self._stop.is_set() or not self._read_chunk():
                self._set_state("ended")
                return None
        t_start, samples = self._pending.popleft()
        item = AudioWindow(self._index, time.time(), t_start, samples, time.perf_counter() - start)
        self._index += 1
        return item

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
