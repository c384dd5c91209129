"""``picamera2[:INDEX]``: the Raspberry Pi camera module through Picamera2 (libcamera).

On Raspberry Pi OS Bookworm the camera module is not a V4L2 device OpenCV can open.
Picamera2 comes from the system package ``python3-picamera2``; a virtualenv sees it
only when made with ``--system-site-packages``. Without it, ``exec:rpicam-vid`` works.
"""

from __future__ import annotations

import contextlib
import importlib
import re
from typing import Any

import numpy as np

from edge_agent.errors import SourceError
from edge_agent.sources.base import ReconnectingSource

EXEC_RECIPE = 'exec:rpicam-vid -t 0 --codec mjpeg -o -'
DEFAULT_SIZE = (640, 480)


def camera_number(uri: str) -> int:
    """``picamera2`` → 0, ``picamera2:1`` → 1."""
    match = re.fullmatch(r"picamera2(?::(\d{1,2}))?", uri.strip(), flags=re.IGNORECASE)
    if not match:
        raise SourceError(f"bad camera {uri!r}: use picamera2 or picamera2:INDEX (e.g. picamera2:1)")
    return int(match.group(1) or 0)


def import_picamera2() -> Any:
    """The ``Picamera2`` class; SourceError with what to do instead when it cannot be imported."""
    try:
        module = importlib.import_module("picamera2")
    except ImportError as exc:
        raise SourceError(
            f"picamera2 cannot be imported ({exc}): on Raspberry Pi OS install python3-picamera2 and make the "
            f"virtualenv with --system-site-packages, or use --source \"{EXEC_RECIPE}\""
        ) from exc
    except (ValueError, AttributeError) as exc:  # Debian's simplejpeg is built for numpy 1, the venv has numpy 2
        raise SourceError(
            f"picamera2 cannot be imported ({type(exc).__name__}: {' '.join(str(exc).split())[:120]}): "
            "its simplejpeg was built for another numpy; run `pip install --force-reinstall simplejpeg` in the "
            f"virtualenv, or use --source \"{EXEC_RECIPE}\""
        ) from exc
    return module.Picamera2


class Picamera2Source(ReconnectingSource):
    """Frames (BGR, as OpenCV's) from one Pi camera; reopened with backoff when it fails.

    Not run here: no Pi camera and no picamera2 on the test machines.
    """

    type_name = "picamera2"

    def __init__(self, uri: str, width: int | None = None, height: int | None = None,
                 reconnect_min_s: float = 0.5, reconnect_max_s: float = 10.0) -> None:
        super().__init__(reconnect_min_s, reconnect_max_s)
        self._number = camera_number(uri)
        self._size = (width or DEFAULT_SIZE[0], height or DEFAULT_SIZE[1])
        self._class: Any = None
        self._camera: Any = None

    def start(self) -> None:
        self._class = import_picamera2()

    def state(self) -> dict[str, Any]:
        state = super().state()
        state["camera"] = self._number
        return state

    def _connect(self) -> None:
        try:
            camera = self._class(self._number)
        except (RuntimeError, IndexError, OSError) as exc:
            raise SourceError(f"cannot open Pi camera {self._number}: {exc} (list cameras: rpicam-hello --list-cameras)"
                              ) from exc
        try:
            # "RGB888" is B, G, R in memory: the byte order OpenCV and the tasks expect.
            camera.configure(camera.create_video_configuration(main={"size": self._size, "format": "RGB888"}))
            camera.start()
        except (RuntimeError, ValueError, OSError) as exc:
            camera.close()
            raise SourceError(f"cannot start Pi camera {self._number}: {exc}") from exc
        self._camera = camera

    def _grab(self) -> np.ndarray | None:
        try:
            image: np.ndarray = self._camera.capture_array("main")
        except (RuntimeError, OSError) as exc:
            raise SourceError(f"Pi camera {self._number}: {exc}") from exc
        return image

    def _disconnect(self) -> None:
        camera, self._camera = self._camera, None
        if camera is not None:
            for release in (camera.stop, camera.close):
                with contextlib.suppress(RuntimeError, OSError):
                    release()
