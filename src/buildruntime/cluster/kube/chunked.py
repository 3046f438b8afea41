"""Reading a chunked HTTP body in large blocks: what a watch or a follow log stream is.

Kubernetes behaviour handled here: the API server answers a watch (and a follow log
request) with ``Transfer-Encoding: chunked`` and writes at least one HTTP chunk per watch
event. urllib3's ``stream()`` / ``read_chunked()`` / ``read1()`` each return at most one
chunk per call, and every call is one hop between the event loop and a worker thread
(about 100 µs with anyio), more than decoding an 11 KiB pod takes: reading chunk by chunk
would cap a watch at a fraction of what ``json.loads`` can do. So :class:`BodyReader`
reads the raw socket buffer in large blocks (one ``recv`` returns every chunk that has
arrived) and :class:`Dechunker` undoes the chunked framing; other bodies (a
``Content-Length``, as for the log of a finished container, or a content encoding) fall
back to urllib3's ``read1``.

Everything here blocks: it runs in a worker thread (see :mod:`.threads`).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import socket
import ssl
from typing import Any

READ_SIZE = 256 * 1024
"""Bytes asked for per read. Large, so that one thread hop carries every event that has
arrived (a burst after a relist, a chatty pod), not one event per hop."""

_MAX_SIZE_LINE = 1024


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
