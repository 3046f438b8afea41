"""A TCP proxy between the client and the API server, for cutting connections on purpose.

It relays bytes both ways (TLS passes through untouched) on a thread of its own, so it
behaves like a network element the client cannot see: ``cut()`` resets every open
connection at once, ``refuse(seconds)`` makes new connections fail for a while (an
outage), ``stall(seconds)`` stops relaying without closing (a silent connection).
Only loopback addresses are used.

Like a network, it holds back one connection at a time and no other: each direction of
each connection has its own bounded buffer, and a receiver that does not read stops only
the sender writing to it (TCP's flow control, passed along). A single blocking send
would instead stop every connection behind one unread socket, which no network does.
A side that closes normally is closed normally on the other side once everything it
sent has been passed on; only ``cut()``, ``refuse()`` and errors reset.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time

_CHUNK = 65536
_BUFFERED = 1 << 20
"""Bytes held for one direction of one connection before reading its sender pauses."""

_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"
"""SO_LINGER on, 0 s: close() sends RST, as a cut connection does."""


class TcpProxy:
    """Relays 127.0.0.1:<port> to ``upstream``; start with ``with TcpProxy(...) as proxy``."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._outbox: dict[socket.socket, bytearray] = {}
        """Bytes received from a socket's peer, not yet sent to the socket."""
        self._ended: set[socket.socket] = set()
        """Sockets whose other end has closed normally (no more to read from them)."""
        self._lock = threading.Lock()
        self._refuse_until = 0.0
        self._stall_until = 0.0
        self._cut_requested = False
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="tcp-proxy", daemon=True)
        self.connections = 0
        self.cuts = 0

    def __enter__(self) -> TcpProxy:
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping = True
        self._thread.join(timeout=5)
        for sock in list(self._pairs):
            with contextlib.suppress(OSError):
                sock.close()
        self._listener.close()
        self._selector.close()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Reset every open connection (watches, log streams) at once."""
        with self._lock:
            self._cut_requested = True

    def refuse(self, seconds: float) -> None:
        """Cut everything now and refuse new connections for ``seconds``."""
        with self._lock:
            self._refuse_until = time.monotonic() + seconds
            self._cut_requested = True

    def stall(self, seconds: float) -> None:
        """Relay nothing for ``seconds``, keeping connections open."""
        with self._lock:
            self._stall_until = time.monotonic() + seconds

    @property
    def open_connections(self) -> int:
        return len(self._pairs) // 2

    def _serve(self) -> None:
        while not self._stopping:
            with self._lock:
                cut, self._cut_requested = self._cut_requested, False
                stalled = time.monotonic() < self._stall_until
            if cut:
                self._reset_all()
            for key, mask in self._selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                    continue
                if stalled:
                    continue
                if mask & selectors.EVENT_WRITE:
                    self._flush(sock)
                if mask & selectors.EVENT_READ:
                    self._receive(sock)
            if stalled:
                time.sleep(0.02)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        if time.monotonic() < self._refuse_until:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            client.close()
            return
        try:
            upstream = socket.create_connection(self._upstream, timeout=5)
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.setblocking(False)
            self._outbox[sock] = bytearray()
            self._selector.register(sock, selectors.EVENT_READ)
        self._pairs[client] = upstream
        self._pairs[upstream] = client
        self.connections += 1

    def _receive(self, sock: socket.socket) -> None:
        """Read what ``sock`` sent and pass it towards its peer."""
        peer = self._pairs.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_pair(sock, reset=True)
            return
        if not data:
            self._ended.add(sock)
        else:
            self._outbox[peer] += data
        self._flush(peer)

    def _flush(self, sock: socket.socket) -> None:
        """Send ``sock`` what its peer sent; pass a normal close on once all is sent."""
        peer = self._pairs.get(sock)
        if peer is None:
            return
        outbox = self._outbox[sock]
        if outbox:
            try:
                sent = sock.send(outbox)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close_pair(sock, reset=True)
                return
            del outbox[:sent]
        if not outbox and peer in self._ended:
            # Everything the peer sent before closing has gone on: close this side too
            # (both at once: an HTTP client or server that closes is done with both).
            self._close_pair(sock, reset=False)
            return
        self._watch(sock)
        self._watch(peer)

    def _watch(self, sock: socket.socket) -> None:
        """Wait to read ``sock`` while its peer's buffer has room (flow control), and to
        write to it while its own buffer holds something."""
        peer = self._pairs[sock]
        events = 0
        if sock not in self._ended and len(self._outbox[peer]) < _BUFFERED:
            events |= selectors.EVENT_READ
        if self._outbox[sock]:
            events |= selectors.EVENT_WRITE
        try:
            registered = self._selector.get_key(sock).events
        except KeyError:
            registered = 0
        if events == registered:
            return
        if not events:
            self._selector.unregister(sock)
        elif not registered:
            self._selector.register(sock, events)
        else:
            self._selector.modify(sock, events)

    def _close_pair(self, sock: socket.socket, *, reset: bool) -> None:
        peer = self._pairs.pop(sock, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._pairs.pop(s, None)
            self._outbox.pop(s, None)
            self._ended.discard(s)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(s)
            with contextlib.suppress(OSError):
                if reset:
                    # RST rather than FIN: a cut, not a clean close.
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                s.close()

    def _reset_all(self) -> None:
        for sock in list(self._pairs):
            if sock in self._pairs:
                self.cuts += 1  # counted first: the reset is seen the moment it is sent
                self._close_pair(sock, reset=True)
