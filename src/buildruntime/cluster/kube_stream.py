"""Blocking readers for the streamed bodies of watches and log streams.

Everything here runs in a worker thread (see :mod:`buildruntime.cluster.kube`), except
:meth:`StreamConnection.aclose`, which runs on the event loop and never blocks it.

Why not ``urllib3``'s ``stream()`` / ``read_chunked()`` / ``read1()``: each of those
returns at most one HTTP chunk per call, and the API server writes (at least) one chunk
per watch event. Every call is one hop between the event loop and a worker thread (about
100 µs with anyio), more than decoding an 11 KiB pod takes, so reading chunk by chunk
caps throughput at a fraction of what ``json.loads`` can do. Instead, for a chunked
response (what the API server sends for watches and follow log streams), we read the
raw socket buffer in large blocks (one ``recv`` returns every chunk that has arrived)
and undo the chunked framing ourselves (:class:`Dechunker`); other bodies (a
``Content-Length``, a content encoding) fall back to urllib3's ``read1``.

Why a read timeout *and* a way to interrupt: the Python client's own watch can hang
forever on a connection that went silent (kubernetes-client/python #1148, #1402). The
socket's read timeout (``_request_timeout=(connect, read)``) turns silence into an
error; :meth:`StreamConnection.aclose` shuts the socket down so that a blocked
``recv`` returns at once when the consumer goes away (cancellation), instead of holding
a thread until the timeout.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import socket
import ssl
import threading
from typing import Any

import anyio

logger = logging.getLogger("buildruntime.cluster")

READ_SIZE = 256 * 1024
"""Bytes asked for per read. Large, so that one thread hop carries every event that has
arrived (a burst after a relist, a chatty pod), not one event per hop."""

_MAX_SIZE_LINE = 1024
_CLOSE_WAIT = 5.0


class BrokenStream(Exception):
    """The body ended or was framed in a way HTTP does not allow: the connection broke
    (a chunked body that stops before its terminating zero-size chunk) or was garbled."""


class Dechunker:
    """Undoes HTTP/1.1 chunked transfer coding (RFC 9112 §7.1) over arbitrary blocks.

    :meth:`feed` takes whatever ``recv`` returned (any number of chunks, a chunk split
    anywhere, a size line split anywhere) and returns the payload bytes it contained.
    Chunk extensions are ignored; the CRLF after each chunk's data shows up as an empty
    size line and is skipped; trailers after the last chunk are never read (the
    connection is closed, not reused, after a stream).
    """

    __slots__ = ("_left", "_partial", "done")

    def __init__(self) -> None:
        self._left = 0
        self._partial = b""
        self.done = False

    def feed(self, data: bytes) -> bytes:
        if self._partial:
            data = self._partial + data
            self._partial = b""
        size = len(data)
        left = self._left
        if left >= size:
            # The common case for a large object: the block is all payload.
            self._left = left - size
            return data
        out: list[memoryview] = []
        view = memoryview(data)
        pos = 0
        while pos < size:
            if left:
                end = pos + left
                if end > size:
                    end = size
                out.append(view[pos:end])  # no copy until the join
                left -= end - pos
                pos = end
                continue
            eol = data.find(b"\n", pos)
            if eol < 0:
                self._partial = data[pos:]
                if len(self._partial) > _MAX_SIZE_LINE:
                    raise BrokenStream("chunk size line too long")
                break
            line = data[pos:eol].split(b";", 1)[0].strip()
            pos = eol + 1
            if not line:
                continue  # the CRLF that ends the previous chunk's data
            try:
                left = int(line, 16)
            except ValueError:
                raise BrokenStream(f"bad chunk size line {line[:40]!r}") from None
            if left == 0:
                self.done = True
                break
        self._left = left
        return b"".join(out)


class BodyReader:
    """Reads a urllib3 response body in large blocks (blocking: call from a thread).

    :meth:`read` returns the next payload bytes, waiting for at least one byte; ``b""``
    means the server ended the body properly. A body cut short raises
    :class:`BrokenStream`; socket errors and read timeouts raise as they come
    (``OSError``, ``TimeoutError``, urllib3 and ``http.client`` errors).
    """

    __slots__ = ("_dechunker", "_raw", "_response", "_sock")

    def __init__(self, response: Any) -> None:
        self._response = response
        self._raw: io.BufferedReader | None = None
        self._dechunker: Dechunker | None = None
        self._sock: socket.socket | None = None
        # urllib3's HTTPResponse wraps http.client's, whose ``fp`` is the socket's
        # buffered reader positioned at the start of the body (headers consumed).
        fp = getattr(response, "_fp", None)
        if (
            getattr(response, "chunked", False)
            and isinstance(fp, http.client.HTTPResponse)
            and fp.chunked
            and fp.chunk_left is None  # nothing of the body consumed yet
            and isinstance(getattr(fp, "fp", None), io.BufferedReader)
            and not response.headers.get("content-encoding")
        ):
            self._raw = fp.fp
            self._dechunker = Dechunker()
            sock = getattr(getattr(response, "_connection", None), "sock", None)
            if isinstance(sock, socket.socket):
                self._sock = sock

    def read(self) -> bytes:
        raw = self._raw
        if raw is None:
            return self._read_fallback()
        dechunker = self._dechunker
        assert dechunker is not None
        while not dechunker.done:
            block = raw.read1(READ_SIZE)
            if not block:
                raise BrokenStream("connection closed in the middle of the body")
            payload = dechunker.feed(block)
            if payload:
                if dechunker.done or len(payload) >= READ_SIZE or self._sock is None:
                    return payload
                return self._read_ready(raw, dechunker, payload)
        return b""

    def _read_ready(self, raw: io.BufferedReader, dechunker: Dechunker, first: bytes) -> bytes:
        """Add whatever else has already arrived, without waiting for more.

        Over TLS one ``recv`` returns at most one TLS record (16 KiB), usually one
        event: without this, every event would cost a thread hop. The socket is made
        non-blocking for these extra reads: a read with nothing ready returns
        ``b""`` (plain socket) or raises ``SSLWantReadError`` (TLS, including the
        case of a record only partly arrived), and we stop there. An end of the body
        seen here is left to the next, blocking, read to report.
        """
        sock = self._sock
        assert sock is not None
        parts = [first]
        size = len(first)
        timeout = sock.gettimeout()
        sock.settimeout(0.0)
        try:
            while size < READ_SIZE and not dechunker.done:
                try:
                    block = raw.read1(READ_SIZE - size)
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    break
                if not block:
                    break
                payload = dechunker.feed(block)
                if payload:
                    parts.append(payload)
                    size += len(payload)
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(timeout)
        return first if len(parts) == 1 else b"".join(parts)

    def _read_fallback(self) -> bytes:
        # urllib3's read1 goes through http.client, which handles chunking, a
        # Content-Length, and reports a body cut short as IncompleteRead/ProtocolError.
        data: bytes | None = self._response.read1(READ_SIZE)
        return data or b""


class LineSplitter:
    """Splits a watch body into lines (``application/json`` watch framing: one JSON
    object per line). A line split across reads waits in :attr:`_pending` until its
    newline arrives; empty lines are dropped.

    Splitting happens in the worker thread; decoding happens on the event loop, one
    line at a time as the consumer asks for it (see ``kube._Watch``).
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: list[bytes] = []

    def feed(self, data: bytes) -> list[bytes]:
        if b"\n" not in data:
            if data:
                self._pending.append(data)
            return []
        if self._pending:
            self._pending.append(data)
            data = b"".join(self._pending)
            self._pending = []
        lines = data.split(b"\n")
        tail = lines.pop()
        if tail:
            self._pending.append(tail)
        if b"" in lines:
            lines = [line for line in lines if line]
        return lines

    def finish(self) -> list[bytes]:
        """What is left when the body ends (a last line with no newline)."""
        rest = b"".join(self._pending)
        self._pending = []
        return [rest] if rest.strip() else []


class StreamConnection:
    """Owns one streamed HTTP response and its safe closing across threads.

    A worker thread opens the request (:meth:`attach`) and then reads it
    (:meth:`read`); the event loop closes it (:meth:`aclose`), possibly while a read is
    blocked in ``recv`` in a thread whose ``to_thread`` call was abandoned by a
    cancellation. Closing must neither block the event loop nor leave that thread
    blocked:

    - ``close()`` on the response would take the buffered reader's lock, which the
      blocked reader holds: the loop would freeze until data or the read timeout.
      So :meth:`aclose` first calls ``shutdown(SHUT_RD)`` on the socket (urllib3's
      ``HTTPResponse.shutdown``, made for exactly this), which makes the blocked
      ``recv`` return at once, then waits (without blocking the loop) until the reader
      has let go, and only then closes the response.
    - If the request is still being opened when the consumer goes away, the opening
      thread finds the connection closed when it gets its response and closes it
      itself.
    """

    __slots__ = ("_closed", "_lock", "_read_lock", "_reader", "response")

    def __init__(self) -> None:
        self.response: Any = None
        self._reader: BodyReader | None = None
        self._lock = threading.Lock()  # guards response/_closed hand-over
        self._read_lock = threading.Lock()  # held by the thread that reads
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def attach(self, response: Any) -> bool:
        """Called by the opening thread with the response; False if already closed
        (the response is then closed here, in that thread)."""
        with self._lock:
            if not self._closed:
                self.response = response
                self._reader = BodyReader(response)
                return True
        _close_response(response)
        return False

    def read(self) -> bytes:
        """Blocking: the next payload bytes; ``b""`` once the body ended properly or
        the connection was closed by :meth:`aclose`. Errors propagate (see
        :class:`BodyReader`), except those caused by our own shutdown."""
        if not self._read_lock.acquire(blocking=False):
            return b""  # aclose() owns the connection now
        try:
            reader = self._reader
            if self._closed or reader is None:
                return b""
            try:
                return reader.read()
            except Exception:
                if self._closed:  # our own shutdown woke the read up
                    return b""
                raise
        finally:
            self._read_lock.release()

    async def aclose(self) -> None:
        """Close the response; see the class docstring. Safe to call more than once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            response = self.response
        if response is None:
            return  # never opened, or the opening thread will close it
        _shutdown(response)
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(_CLOSE_WAIT):
                # Polling: the lock is released by a plain thread, and waiting on it
                # from a thread would need a free token of the limiter.
                while not self._read_lock.acquire(blocking=False):  # noqa: ASYNC110
                    await anyio.sleep(0.001)
                _close_response(response)
                return
        # A reader that does not let go even after the shutdown: do not block the
        # event loop on the buffered reader's lock; close from a thread instead.
        logger.warning("a stream reader did not stop after shutdown; closing in background")
        threading.Thread(target=_close_response, args=(response,), daemon=True).start()


def _shutdown(response: Any) -> None:
    """Wake any thread blocked reading this response (recv returns b"" at once)."""
    try:
        response.shutdown()
        return
    except (AttributeError, ValueError, RuntimeError, OSError):
        pass
    sock = getattr(getattr(response, "_connection", None), "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _close_response(response: Any) -> None:
    """Close the connection (it is never reused after a stream) and give the pool its
    slot back."""
    try:
        response.close()
    except Exception:  # closing must not fail the caller
        logger.debug("error closing a stream response", exc_info=True)
    try:
        response.release_conn()
    except Exception:
        logger.debug("error releasing a stream connection", exc_info=True)
