"""The integration suite's TCP proxy behaves like a network: per-connection flow control,
and a normal close passed on after everything sent before it."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from integration.tcp_proxy import TcpProxy

BIG = 32 * 1024 * 1024
"""More than a loopback connection's socket buffers hold, both ends together."""


def _payload(size: int) -> bytes:
    return (b"0123456789abcdef" * (size // 16 + 1))[:size]


class _Server:
    """Per connection: ``big`` sends BIG bytes and closes; ``echo`` echoes one line."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.sent = 0
        """Bytes of ``big`` handed to the kernel so far (all connections)."""
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(ConnectionError), conn, conn.makefile("rb") as reader:
            command = reader.readline().strip()
            if command == b"big":
                payload = memoryview(_payload(BIG))
                for start in range(0, BIG, 65536):
                    conn.sendall(payload[start : start + 65536])
                    self.sent += len(payload[start : start + 65536])
            elif command == b"echo":
                conn.sendall(reader.readline())

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def server() -> Iterator[_Server]:
    serving = _Server()
    yield serving
    serving.close()


@pytest.fixture
def proxy(server: _Server) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", server.port) as relay:
        yield relay


def _until_held_back(server: _Server) -> None:
    """Wait until the server can send no more: every buffer on the way is full."""
    deadline = time.monotonic() + 10
    last = -1
    while server.sent != last:
        assert time.monotonic() < deadline, "the server never stopped sending"
        last = server.sent
        time.sleep(0.3)
    assert 0 < server.sent < BIG


def _connect(proxy: TcpProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=10)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_connection_nobody_reads_holds_back_no_other(proxy: TcpProxy, server: _Server) -> None:
    unread = _connect(proxy)
    unread.sendall(b"big\n")
    _until_held_back(server)  # the server's data fills every buffer on the way to `unread`
    other = _connect(proxy)
    other.settimeout(5)
    other.sendall(b"echo\nhello\n")
    with other.makefile("rb") as answer:
        assert answer.readline() == b"hello\n"
    other.close()
    # And the held-back connection still gets every byte, in order, then a normal end.
    received = _read_all(unread)
    unread.close()
    assert len(received) == BIG
    assert hashlib.sha256(received).digest() == hashlib.sha256(_payload(BIG)).digest()


def test_a_normal_close_comes_after_everything_sent_before_it(proxy: TcpProxy) -> None:
    sock = _connect(proxy)
    sock.sendall(b"big\n")
    time.sleep(1.0)  # the server has closed by now, with data still on its way
    received = _read_all(sock)  # b"" at the end, not ConnectionResetError
    sock.close()
    assert len(received) == BIG


def test_cut_resets_open_connections(proxy: TcpProxy) -> None:
    sock = _connect(proxy)
    sock.sendall(b"big\n")
    time.sleep(0.3)
    proxy.cut()
    with pytest.raises(ConnectionResetError):
        _read_all(sock)
    sock.close()
    assert proxy.cuts >= 1
