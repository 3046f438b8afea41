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

Everything here blocks, and runs in a worker thread (see :mod:`.threads`), except
:meth:`BodyReader.read_arrived`, which only takes what has already arrived and is
called on the event loop.
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
    anywhere, a size line split anywhere) and returns the payload it contained, as one
    piece per chunk (or part of a chunk) in it. The API server writes each watch event
    as one chunk, so a piece is usually one whole event line, copied once out of the
    block and never joined with the others. Chunk extensions are ignored; the CRLF
    after each chunk's data shows up as an empty size line and is skipped; trailers
    after the last chunk are never read (the connection is closed, not reused, after a
    stream).
    """

    __slots__ = ("_left", "_partial", "done")

    def __init__(self) -> None:
        self._left = 0
        self._partial = b""
        self.done = False

    def feed(self, data: bytes) -> list[bytes]:
        if self._partial:
            data = self._partial + data
            self._partial = b""
        size = len(data)
        left = self._left
        if left >= size:
            # The common case for a large object: the block is all payload.
            self._left = left - size
            return [data] if data else []
        out: list[bytes] = []
        pos = 0
        while pos < size:
            if left:
                end = pos + left
                if end > size:
                    end = size
                out.append(data[pos:end])
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
        return out


class BodyReader:
    """Reads a urllib3 response body in large blocks (blocking: call from a thread).

    :meth:`read_pieces` returns the next payload, waiting for at least one byte, as the
    pieces :class:`Dechunker` made of it; ``[]`` means the server ended the body
    properly. A body cut short raises :class:`BrokenStream`; socket errors and read
    timeouts raise as they come (``OSError``, ``TimeoutError``, urllib3 and
    ``http.client`` errors). :meth:`read_arrived` takes only what has already arrived.
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
            # The socket the buffered reader reads (its SocketIO's): http.client drops
            # its own reference to it when the response says ``Connection: close``.
            sock = getattr(fp.fp.raw, "_sock", None)
            if not isinstance(sock, socket.socket):
                sock = getattr(getattr(response, "_connection", None), "sock", None)
            if isinstance(sock, socket.socket):
                self._sock = sock

    def read_pieces(self) -> list[bytes]:
        raw = self._raw
        if raw is None:
            data = self._read_fallback()
            return [data] if data else []
        dechunker = self._dechunker
        assert dechunker is not None
        while not dechunker.done:
            block = raw.read1(READ_SIZE)
            if not block:
                raise BrokenStream("connection closed in the middle of the body")
            pieces = dechunker.feed(block)
            if pieces:
                if dechunker.done or len(block) >= READ_SIZE or self._sock is None:
                    return pieces
                return self._add_arrived(pieces, len(block))
        return []

    def read_arrived(self) -> list[bytes] | None:
        """Non-blocking: the payload that has already arrived, or None when nothing has
        (or the body is not read in blocks, or it ended): then :meth:`read_pieces` waits.

        This is what lets the event loop read a busy stream itself, without a thread
        hop per block (a hop wakes a worker thread, then the event loop). The end of
        the body, or a connection that closed, is left to :meth:`read_pieces`.
        """
        dechunker = self._dechunker
        if self._raw is None or self._sock is None or dechunker is None or dechunker.done:
            return None
        return self._add_arrived([], 0) or None

    def _add_arrived(self, pieces: list[bytes], size: int) -> list[bytes]:
        """``pieces`` (from ``size`` bytes read) and whatever else has already arrived,
        without waiting for more.

        Over TLS one ``recv`` returns at most one TLS record (16 KiB), usually one
        event: without this, every event would cost a thread hop. The socket is made
        non-blocking for these extra reads: a read with nothing ready returns
        ``b""`` (plain socket) or raises ``SSLWantReadError`` (TLS, including the
        case of a record only partly arrived), and we stop there. An end of the body
        seen here is left to the next, blocking, read to report.
        """
        raw = self._raw
        dechunker = self._dechunker
        sock = self._sock
        assert raw is not None
        assert dechunker is not None
        assert sock is not None
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
                size += len(block)
                pieces += dechunker.feed(block)
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(timeout)
        return pieces

    def _read_fallback(self) -> bytes:
        # urllib3's read1 goes through http.client, which handles chunking, a
        # Content-Length, and reports a body cut short as IncompleteRead/ProtocolError.
        data: bytes | None = self._response.read1(READ_SIZE)
        return data or b""
