"""Exit statuses of the command line, and the exception for a user's mistake."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class BadInput(Exception):
    """A problem with what the user gave: exit 2 with this one-line message."""


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
