"""Marks tests by what they need beyond a device install: TensorFlow or scikit-learn.

A device installs the project without the ``[converter]`` and ``[dev]`` extras, so
``pytest -m "not tensorflow and not sklearn" tests/unit`` is the suite that runs there
(``make pi-check`` runs it on an emulated Raspberry Pi). Tests are marked by the session
fixtures they use (the fixture builds its model or data with TensorFlow / scikit-learn in a
child process); a test that calls such a builder directly carries the marker itself.
"""

from __future__ import annotations

import pytest

# fixture -> markers; fixtures that depend on these (digits_bundle on digits_models, ...) are
# covered because pytest lists a test's fixtures transitively.
FIXTURE_NEEDS: dict[str, tuple[str, ...]] = {
    "digits_data": ("sklearn",),
    "digits_models": ("tensorflow", "sklearn"),
    "keyword_models": ("tensorflow",),
    "agent_models_dir": ("tensorflow",),
    "multilabel_audio": ("tensorflow",),
    "shapes_models": ("tensorflow",),
    "tiny_models": ("tensorflow",),
    "tf_models": ("tensorflow",),  # tests/integration/test_tflite_metadata.py
    "ladder_model": ("tensorflow", "sklearn"),  # tests/integration/test_ladder.py
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = getattr(item, "fixturenames", ())
        for marker in sorted({m for name in names for m in FIXTURE_NEEDS.get(name, ())}):
            item.add_marker(marker)
