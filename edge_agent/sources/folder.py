"""A folder of images, in file-name order (every image once, or looping).

Each image's size is read from its header first: one over the pixel limit is
skipped (counted in ``errors``) without being decoded.
"""

from __future__ import annotations

import time
from pathlib import Path

from edge_agent.errors import SourceError
from edge_agent.sources.base import Frame, Item, Source, import_cv2
from edge_agent.sources.imagesize import DEFAULT_MAX_PIXELS, check_image_size

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".webp", ".tif", ".tiff"})


def list_images(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class FolderSource(Source):
    type_name = "folder"
    live = False

    def __init__(self, path: str, loop: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        super().__init__()
        self._dir = Path(path)
        self._loop = loop
        self._max_pixels = max_pixels
        self._files: list[Path] = []
        self._pos = 0
        self._index = 0

    def start(self) -> None:
        try:
            self._files = list_images(self._dir)
        except OSError as exc:
            raise SourceError(f"cannot list image folder {self._dir}: {exc.strerror or exc}") from exc
        if not self._files:
            raise SourceError(f"image folder {self._dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self._set_state("reading")

    @property
    def current_file(self) -> Path | None:
        return self._files[self._pos - 1] if self._pos else None

    def read(self) -> Item | None:
        cv2 = import_cv2()

        while not self._stop.is_set():
            if self._pos >= len(self._files):
                if not self._loop:
                    self._set_state("ended")
                    return None
                self._pos = 0
            path = self._files[self._pos]
            self._pos += 1
            start = time.perf_counter()
            try:
                with path.open("rb") as handle:
                    check_image_size(handle, self._max_pixels, path.name)
            except SourceError as exc:
                self._set_state("reading", f"skipped {exc}")
                continue
            except OSError as exc:
                self._set_state("reading", f"skipped {path.name}: {exc.strerror or exc}")
                continue
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                self._set_state("reading", f"skipped {path.name}: cannot decode it")
                continue
            frame = Frame(self._index, time.time(), image, time.perf_counter() - start, file=path.name)
            self._index += 1
            return frame
        return None
