"""A small error taxonomy. Flows retry only TransientError; everything else fails fast.

Messages name the file, the row or the key, and the fix.
"""

from __future__ import annotations


class LmopsError(Exception):
    """Base of every error lmops raises on purpose; the CLI prints it as one paragraph."""

    exit_code = 1


class UserError(LmopsError):
    """Bad params, bad CLI usage, a missing file: the user must change something."""

    exit_code = 2


class ConfigError(UserError):
    """params.yaml or an override is invalid; lists every bad key at once."""


class DataError(LmopsError):
    """The data itself is unusable (validation failed, no rows left, unknown labels)."""

    exit_code = 3


class TransientError(LmopsError):
    """A failure that may pass on retry (a remote, a lock, a server still starting)."""

    exit_code = 4


class RegistryError(LmopsError):
    """The model registry refused or is inconsistent."""

    exit_code = 5
