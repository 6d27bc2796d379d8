"""The one exception type the CLI turns into a clear, single-line error."""

from __future__ import annotations


class TfSemisegError(Exception):
    """A user-facing error: bad input file, bad config, unwritable path.

    The message names the offending file or key and the problem; the CLI prints it
    without a traceback.
    """


class ConfigError(TfSemisegError):
    """An invalid configuration file or value."""


class DataError(TfSemisegError):
    """An invalid, unreadable or inconsistent input volume or dataset."""
