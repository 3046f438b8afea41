"""A TCP proxy between the client and the API server, for cutting connections on purpose.

It relays bytes both ways (TLS passes through untouched) on a thread of its own, so it
behaves like a network element the client cannot see: ``cut()`` resets every open
connection at once, ``refuse(seconds)`` makes new connections fail for a while (an
outage), ``stall(seconds)`` stops relaying without closing (a silent connection).
Only loopback addresses are used.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time


class TcpProxy:
    """Relays 127.0.0.1:<port> to ``upstream``; start with ``with TcpProxy(...) as proxy``."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._pairs: dict[socket.socket, socket.socket] = {}
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
            for key, _ in self._selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                elif not stalled:
                    self._relay(sock)
            if stalled:
                time.sleep(0.02)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        if time.monotonic() < self._refuse_until:
            client.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            client.close()
            return
        try:
            upstream = socket.create_connection(self._upstream, timeout=5)
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ)
        self._pairs[client] = upstream
        self._pairs[upstream] = client
        self.connections += 1

    def _relay(self, sock: socket.socket) -> None:
        peer = self._pairs.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close_pair(sock)
            return
        try:
            peer.setblocking(True)
            peer.sendall(data)
            peer.setblocking(False)
        except OSError:
            self._close_pair(sock)

    def _close_pair(self, sock: socket.socket) -> None:
        peer = self._pairs.pop(sock, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._pairs.pop(s, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(s)
            with contextlib.suppress(OSError):
                # RST rather than FIN: a cut, not a clean close.
                s.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                s.close()

    def _reset_all(self) -> None:
        for sock in list(self._pairs):
            if sock in self._pairs:
                self._close_pair(sock)
                self.cuts += 1
