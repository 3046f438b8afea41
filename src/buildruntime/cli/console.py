"""What the command writes: step logs and the summary to stdout, the rest to stderr."""

from __future__ import annotations

import os
from typing import Protocol

_STEP_COLOURS = ("36", "35", "34", "33", "32", "96", "95", "94")


class TextStream(Protocol):
    """What the console writes to (``sys.stdout`` and the like)."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...

    def isatty(self) -> bool: ...


class Console:
    """Where the command writes: logs and the summary to ``out``, the rest to ``err``."""

    def __init__(self, out: TextStream, err: TextStream, *, colour: bool) -> None:
        self.out = out
        self.err = err
        self.colour = colour
        self._step_colour: dict[str, str] = {}
        self._out_broken = False

    @classmethod
    def for_streams(cls, out: TextStream, err: TextStream) -> Console:
        colour = (
            _isatty(out) and "NO_COLOR" not in os.environ and os.environ.get("TERM", "") != "dumb"
        )
        return cls(out, err, colour=colour)

    def paint(self, text: str, code: str | None) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and code else text

    def prefix(self, step: str) -> str:
        if step not in self._step_colour:
            self._step_colour[step] = _STEP_COLOURS[len(self._step_colour) % len(_STEP_COLOURS)]
        return self.paint(f"[{step}]", self._step_colour[step])

    def line(self, text: str) -> None:
        if self._out_broken:
            return
        try:
            self.out.write(text + "\n")
            self.out.flush()
        except BrokenPipeError:
            self._out_broken = True  # e.g. piped into head: keep running the build

    def log(self, step: str, raw: bytes) -> None:
        self.line(f"{self.prefix(step)} {raw.decode('utf-8', errors='replace')}")

    def note(self, text: str) -> None:
        try:
            self.err.write(text + "\n")
            self.err.flush()
        except (BrokenPipeError, ValueError):
            pass

    def error(self, text: str) -> None:
        self.note(f"{self.paint('error:', '31') if _isatty(self.err) else 'error:'} {text}")


def _isatty(stream: TextStream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
