"""Exception family of the converter.

Everything a user can get wrong ends as a :class:`ConvertError` with one line
saying what to fix; the command line prints it and exits with ``exit_code``.
"""

from __future__ import annotations

from typing import Any

from edge_agent.errors import EdgeError

EXIT_USAGE = 2
EXIT_ACCURACY = 3


class ConvertError(EdgeError):
    """The conversion cannot go on: bad model, data, options or output path."""

    exit_code = EXIT_USAGE


class ModelLoadError(ConvertError):
    """The model file is missing, of an unknown format, or TensorFlow cannot load it."""


class DataError(ConvertError):
    """Calibration or validation data is missing, empty, malformed or does not fit the model."""


class QuantizationError(ConvertError):
    """The model cannot be fully quantised (ops without int8 kernels, or float left under --strict)."""


class AccuracyError(ConvertError):
    """The int8 model lost more accuracy than ``--max-accuracy-drop`` allows."""

    exit_code = EXIT_ACCURACY

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report
