"""Exception family of the agent.

Every boundary converts library errors into one of these with ``raise … from``
so the command line can print one clear line saying what to fix.
"""


class EdgeError(Exception):
    """Base class of every error the agent reports to a user."""


class BundleError(EdgeError):
    """A bundle (or plain model with sidecar) is missing, malformed, altered or unsafe."""


class SignatureError(BundleError):
    """A signature is missing where required, or does not verify with the pinned key."""


class ConfigError(EdgeError):
    """The configuration file or command-line options are invalid."""


class RuntimeLoadError(EdgeError):
    """The interpreter or a delegate could not be loaded or run."""


class SourceError(EdgeError):
    """A capture source could not be opened or read."""


class PreprocessError(EdgeError):
    """Input data does not fit the preprocessing spec of the model."""


class InstallError(EdgeError):
    """An install or rollback was refused; the previously active model stays active.

    ``step`` names where: ``copy``, ``verify``, ``smoke``, ``extract``, ``swap``, ``rollback``.
    """

    def __init__(self, message: str, step: str = "") -> None:
        super().__init__(message)
        self.step = step


class NoSpaceError(InstallError):
    """The filesystem cannot hold a bundle (or download) plus a safety margin."""
