"""A real agent that needs no TensorFlow: the colours classifier bundle of :mod:`tests.tiny_store`
(labels red, green, blue) on a looping folder of plain red, green and blue pictures.

Session fixtures ``colours_bundle`` and ``colour_frames``; :func:`start_colours_agent` starts the
real ``edge-agent run --broker`` through :class:`~tests.integration.mqtt_helpers.RealAgent`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.mqtt_helpers import RealAgent
from tests.tiny_store import make_bundle

LABELS = ("red", "green", "blue")


@pytest.fixture(scope="session")
def colours_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("colours") / "colours.bundle")


@pytest.fixture(scope="session")
def colour_frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import cv2
    import numpy as np

    folder = tmp_path_factory.mktemp("colour-frames")
    for i, bgr in enumerate([(0, 0, 255), (0, 255, 0), (255, 0, 0)]):
        image = np.zeros((32, 32, 3), np.uint8)
        image[:] = bgr
        assert cv2.imwrite(str(folder / f"{i}.png"), image)
    return folder


def start_colours_agent(broker_url: str, device_id: str, state_dir: Path, bundle: Path, frames: Path,
                        *extra: str, config: str = "", fps: float = 5.0, **kw: object) -> RealAgent:
    """The real agent; ``config`` is TOML written next to the state directory and passed with --config."""
    args = list(extra)
    if config:
        path = state_dir.parent / f"{state_dir.name}.toml"
        state_dir.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(config)
        args += ["--config", str(path)]
    return RealAgent(broker_url, device_id, state_dir, bundle, frames, *args, fps=fps, **kw)  # type: ignore[arg-type]
