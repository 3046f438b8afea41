"""What the command writes: step logs and the summary to stdout, the rest to stderr.

Every write goes through one writer thread fed by an unbounded queue, so a terminal or
pipe that reads slowly (or not at all for a while) never blocks the event loop: the
build goes on at its own pace and the output catches up. :meth:`Console.close` (and
:meth:`Console.flush`) wait until everything queued has been written, so no line is
lost at the end of a run or on an interrupt. One thread for both streams keeps the order
in which stdout and stderr lines were written, which matters when both are a terminal.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from buildruntime.secrets import Masker

_STEP_COLOURS = ("36", "35", "34", "33", "32", "96", "95", "94")


class TextStream(Protocol):
    """What the console writes to (``sys.stdout`` and the like)."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...

    def isatty(self) -> bool: ...


# Step output may hold terminal controls (colours, cursor moves, a progress bar's \r).
# Into a file or a CI log they garble what follows, or hide it; there they are shown
# escaped. Tab stays: it is layout, not control. DEL and the C1 range are controls too
# (a terminal takes \x9b as CSI).
_CONTROLS = {
    code: ("\\r" if code == 0x0D else f"\\x{code:02x}")
    for code in (*range(0x00, 0x20), *range(0x7F, 0xA0))
    if code != 0x09
}


def escape_controls(text: str) -> str:
    """``text`` with control characters other than tab written as ``\\xNN`` (``\\r``)."""
    return text.translate(_CONTROLS)


_Item = tuple["TextStream", str] | threading.Event | None


class Console:
    """Where the command writes: logs and the summary to ``out``, the rest to ``err``.

    ``escape``: write control characters of step logs visibly escaped (by default when
    ``out`` is not a terminal). ``masker``: the build's secrets, replaced with
    ``********`` in every line the command writes itself (set it as soon as they are
    known). Call :meth:`close` when done.
    """

    def __init__(
        self,
        out: TextStream,
        err: TextStream,
        *,
        colour: bool,
        escape: bool | None = None,
        masker: Masker | None = None,
    ) -> None:
        self.out = out
        self.err = err
        self.colour = colour
        self.masker = masker
        self.escape = not _isatty(out) if escape is None else escape
        self._err_is_tty = _isatty(err)
        self._step_colour: dict[str, str] = {}
        self._broken: set[int] = set()
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_streams(cls, out: TextStream, err: TextStream) -> Console:
        colour = (
            _isatty(out) and "NO_COLOR" not in os.environ and os.environ.get("TERM", "") != "dumb"
        )
        return cls(out, err, colour=colour)

    @property
    def out_broken(self) -> bool:
        """Whether stdout went away (a closed pipe): what is written to it is dropped."""
        return id(self.out) in self._broken

    def paint(self, text: str, code: str | None) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and code else text

    def prefix(self, step: str) -> str:
        if step not in self._step_colour:
            self._step_colour[step] = _STEP_COLOURS[len(self._step_colour) % len(_STEP_COLOURS)]
        return self.paint(f"[{step}]", self._step_colour[step])

    def line(self, text: str) -> None:
        self._put(self.out, self._masked(text) + "\n")

    def log(self, step: str, raw: bytes) -> None:
        # The library masked the line as it captured it: masking it again would cost
        # the busiest path a second scan, and would mask the mask of a value "****".
        text = raw.decode("utf-8", errors="replace")
        if self.escape:
            text = escape_controls(text)
        self._put(self.out, f"{self.prefix(step)} {text}\n")

    def note(self, text: str) -> None:
        self._put(self.err, self._masked(text) + "\n")

    def _masked(self, text: str) -> str:
        """What the command says itself (errors, notes, the summary) comes from many
        places, some of them not the library's (an API server's message, a kubeconfig
        loader's exception): masked here, whatever it was built from."""
        return text if self.masker is None else self.masker.text(text)

    def error(self, text: str) -> None:
        self.note(f"{self.paint('error:', '31') if self._err_is_tty else 'error:'} {text}")

    def flush(self) -> None:
        """Wait until everything written so far is out. Blocks: never call it from the
        event loop."""
        if self._thread is None:
            return
        done = threading.Event()
        self._queue.put(done)
        done.wait()

    def close(self) -> None:
        """Write out everything queued, then stop the writer thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(None)
        thread.join()

    # -- the writer thread -------------------------------------------------------------

    def _put(self, stream: TextStream, text: str) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._write_all, name="buildruntime-console", daemon=True
                    )
                    self._thread.start()
        self._queue.put((stream, text))

    def _write_all(self) -> None:
        dirty: set[int] = set()
        streams: dict[int, TextStream] = {}
        while True:
            if not dirty:
                item = self._queue.get()
            else:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    # Flush once the queue is drained, not after every line: a burst of
                    # lines costs one flush.
                    for key in dirty:
                        self._flush(streams[key])
                    dirty.clear()
                    continue
            if item is None:
                for key in dirty:
                    self._flush(streams[key])
                return
            if isinstance(item, threading.Event):
                for key in dirty:
                    self._flush(streams[key])
                dirty.clear()
                item.set()
                continue
            stream, text = item
            if id(stream) in self._broken:
                continue
            self._write(stream, text)
            streams[id(stream)] = stream
            dirty.add(id(stream))

    def _write(self, stream: TextStream, text: str) -> None:
        try:
            try:
                stream.write(text)
            except UnicodeEncodeError:
                # A stdout that cannot encode a character (PYTHONIOENCODING=ascii, a
                # C locale): the character is replaced, the line still gets out.
                encoding = getattr(stream, "encoding", None) or "ascii"
                stream.write(text.encode(encoding, errors="replace").decode(encoding))
        except (BrokenPipeError, ValueError, OSError):
            # A reader that went away (piped into head) or a closed stream: drop what
            # follows for it and keep running the build.
            self._broken.add(id(stream))

    def _flush(self, stream: TextStream) -> None:
        if id(stream) in self._broken:
            return
        try:
            stream.flush()
        except (BrokenPipeError, ValueError, OSError):
            self._broken.add(id(stream))


class _LogHandler(logging.Handler):
    """The library's log records as notes on the console's stderr, one line each (the
    traceback only with --verbose)."""

    def __init__(self, console: Console, *, verbose: bool) -> None:
        super().__init__(logging.DEBUG if verbose else logging.ERROR)
        self.console = console
        self.verbose = verbose

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                if self.verbose:
                    text += "\n" + logging.Formatter().formatException(record.exc_info)
                else:
                    error = record.exc_info[1]
                    text += f": {' '.join(str(error).split()) or type(error).__name__}"
            self.console.note(f"buildruntime: {text}")
        except Exception:
            self.handleError(record)


@contextmanager
def library_logs(console: Console, *, verbose: bool) -> Iterator[None]:
    """While the block runs, the library's log records go to ``console``: errors only,
    unless ``verbose``. Without this, Python's last-resort handler prints every warning,
    and an unreachable API server makes a minute of "watch failed, retrying" lines that
    say less than the one error the command prints when it gives up.

    Python warnings go there too, one line each; a kubeconfig's
    ``insecure-skip-tls-verify`` is the user's choice, said once rather than at every
    request (urllib3's InsecureRequestWarning)."""
    logger = logging.getLogger("buildruntime")
    handler = _LogHandler(console, verbose=verbose)
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logger.propagate = False

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: object = None,
        line: str | None = None,
    ) -> None:
        console.note(f"buildruntime: warning: {' '.join(str(message).split())}")

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            warnings.filterwarnings("once", message="Unverified HTTPS request")
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _isatty(stream: TextStream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
