"""Errors a user can act on. The CLI prints these in one line and exits non-zero."""


class UlmfitError(Exception):
    """Base class: a problem with the user's input or setup, not a bug."""


class DataError(UlmfitError):
    """Bad or missing input data. The message names the file (and row where it applies)."""


class ConfigError(UlmfitError):
    """Invalid configuration: unknown key, wrong type, out-of-range value."""


class ArtifactError(UlmfitError):
    """A stage artifact is missing, incomplete or not what was expected."""


class RunLockedError(UlmfitError):
    """Another ulmfit process is running on the same run directory."""


class RunDirError(UlmfitError):
    """The run directory (--out) cannot be used: a file, read-only, or holding files the tool did not write."""
