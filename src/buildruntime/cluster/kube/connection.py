"""One streamed HTTP response, and closing it safely from the event loop.

Client behaviour handled here: the Python client's own watch can hang forever on a
connection that went silent (kubernetes-client/python #1148, #1402), and closing a
urllib3 response takes the lock of the buffered reader that a thread blocked in ``recv``
holds. The socket's read timeout (``_request_timeout=(connect, read)``, see
:mod:`.stream`) turns silence into an error; :meth:`StreamConnection.aclose` shuts the
socket down so that a blocked ``recv`` returns at once when the consumer goes away
(cancellation), instead of holding a thread until the timeout or freezing the event loop.

Everything here runs in a worker thread except :meth:`StreamConnection.aclose` and
:meth:`StreamConnection.read_arrived`, which run on the event loop and never block it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from typing import Any

import anyio

from .chunked import BodyReader

# The cluster package's one logger, whichever module logs.
logger = logging.getLogger("buildruntime.cluster")

_CLOSE_WAIT = 5.0


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
        the connection was closed by :meth:`aclose`."""
        pieces = self.read_pieces()
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def read_pieces(self) -> list[bytes]:
        """Blocking: the next payload, in the pieces it arrived in (one per HTTP chunk,
        see :class:`~.chunked.Dechunker`); ``[]`` once the body ended properly or the
        connection was closed by :meth:`aclose`. Errors propagate (see
        :class:`BodyReader`), except those caused by our own shutdown."""
        if not self._read_lock.acquire(blocking=False):
            return []  # aclose() owns the connection now
        try:
            reader = self._reader
            if self._closed or reader is None:
                return []
            try:
                return reader.read_pieces()
            except Exception:
                if self._closed:  # our own shutdown woke the read up
                    return []
                raise
        finally:
            self._read_lock.release()

    def read_arrived(self) -> list[bytes] | None:
        """Non-blocking, for the event loop: the payload pieces that have already
        arrived, or None when none have (then :meth:`read_pieces`, in a thread, waits
        for them and reports the body's end). Never called while a thread reads: the
        consumer reads one way or the other, one read at a time."""
        if not self._read_lock.acquire(blocking=False):
            return None
        try:
            reader = self._reader
            if self._closed or reader is None:
                return None
            return reader.read_arrived()
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
