"""A watch (``GET ...?watch=true``) as an async iterator of events.

Kubernetes behaviour handled here:

- The body is ``application/json`` watch framing: one JSON event per line, ``{"type":
  ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}``; a line may be split across
  HTTP chunks and reads (:class:`LineSplitter`). Each line is decoded by
  :mod:`~buildruntime.cluster.watch_events`, as a dict or straight into the informer's
  typed snapshots.
- An ``ERROR`` event carries a ``Status``; code 410 ("too old resource version": the
  resourceVersion was compacted) is :class:`~buildruntime.cluster.port.ExpiredError`, as
  an HTTP 410 on the request is, so the reflector has one signal meaning "relist".
- With ``allowWatchBookmarks`` the API server sends a bookmark about every minute on a
  pods watch, so ``watch_read_timeout`` (70 s) of silence means a dead connection. Events
  are served from etcd, not the watch cache, and get no bookmarks
  (:data:`~buildruntime.cluster.port.RESOURCES_WITHOUT_BOOKMARKS`): silence on their
  watches is judged against the server's own ``timeoutSeconds``.
- The server ends a watch normally after ``timeoutSeconds``, or when it shuts down: the
  iteration ends and the reflector re-watches from the last resourceVersion.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from anyio.lowlevel import checkpoint

from ..port import RESOURCES_WITHOUT_BOOKMARKS, ApiError
from ..watch_events import WatchDecoder, decode_event, decode_typed_event, watch_error
from .request import Query
from .stream import Stream

if TYPE_CHECKING:
    from .cluster import KubeCluster


class LineSplitter:
    """Splits a watch body into lines (``application/json`` watch framing: one JSON
    object per line). A line split across reads or chunks waits in :attr:`_pending`
    until its newline arrives; empty lines are dropped.

    The API server writes each event as one HTTP chunk, so most pieces of payload are
    one whole line each: those are passed on as they are, newline included (decoders
    ignore it), without a copy; other pieces are joined and split.

    Splitting happens where the block was read (the event loop, or the worker thread
    that waited for it); decoding happens on the event loop, one line at a time as the
    consumer asks for it (see :class:`Watch`).
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: list[bytes] = []

    def feed(self, pieces: list[bytes]) -> list[bytes]:
        """The lines that ``pieces`` (the payload of one read, in order) complete."""
        lines: list[bytes] = []
        pending = self._pending
        for piece in pieces:
            if not pending and piece.find(b"\n") == len(piece) - 1:
                if len(piece) > 1:  # one whole line (an empty piece or line is dropped)
                    lines.append(piece)
                continue
            if b"\n" not in piece:
                pending.append(piece)
                continue
            if pending:
                pending.append(piece)
                piece = b"".join(pending)
                pending.clear()
            parts = piece.split(b"\n")
            tail = parts.pop()
            if tail:
                pending.append(tail)
            lines += [part for part in parts if part]
        return lines

    def finish(self) -> list[bytes]:
        """What is left when the body ends (a last line with no newline)."""
        rest = b"".join(self._pending)
        self._pending = []
        return [rest] if rest.strip() else []


class Watch(Stream):
    """A watch: an async iterator of ``{"type": ..., "object": {...}}`` dicts, or of
    what its decoder makes of each line (:mod:`~buildruntime.cluster.watch_events`).

    - When a block is wanted, whatever has already arrived (up to 256 KiB) is read on
      the event loop without blocking; only when nothing has does a worker thread
      wait for it. A busy watch thus costs no thread hop per block, and a quiet one
      waits in a thread under its read timeout. Each block is split on
      ``b"\\n"``; a line split across reads waits for its newline. Each
      ``__anext__`` then decodes one line, on the event loop. One at a time rather
      than a whole read's worth at once: decoded pods kept alive in a batch make every
      young-generation collection of the cyclic GC walk them, which costs more than
      the decoding itself (measured: 17 dict pods of 15 KiB alive at a time decode
      about 30 % slower than one at a time). A malformed line is logged and skipped.
      Beyond the decoding, an event costs a list index and one comparison.
    - A normal end of the body (the server's ``timeoutSeconds``, or the API server
      closing watches on shutdown) ends the iteration; the reflector re-watches from
      the last resourceVersion.
    - ``ERROR`` events carry a ``Status``: code 410 (the resourceVersion was
      compacted, "too old resource version") raises :class:`ExpiredError`, any other
      code :class:`ApiError`. An HTTP 410 on the request raises ExpiredError too.
    - A cut connection, or ``watch_read_timeout`` seconds without a byte, raises
      :class:`UnavailableError`.
    """

    _verb = "watch"
    _open_counter = "open_watches"

    def __init__(
        self,
        cluster: KubeCluster,
        resource: str,
        namespace: str,
        query: Query,
        decoder: WatchDecoder[Any] | None,
    ) -> None:
        super().__init__(
            cluster,
            f"/api/v1/namespaces/{{namespace}}/{resource}",
            {"namespace": namespace},
            query,
            f"watch {resource} in {namespace}",
        )
        self._resource = resource
        if resource in RESOURCES_WITHOUT_BOOKMARKS:
            # Silence proves nothing on such a watch: wait out the server's own end.
            timeout = dict(query).get("timeoutSeconds")
            server_end = float(timeout) if timeout else 1800.0
            self._read_timeout = server_end + cluster.watch_read_timeout
        self._decoder = decoder
        self._batch: list[bytes] = []
        self._next = 0
        self._splitter = LineSplitter()

    async def __anext__(self) -> Any:
        decoder = self._decoder
        while True:
            batch = self._batch
            index = self._next
            if index < len(batch):
                self._next = index + 1
                try:
                    if decoder is not None:
                        event: Any = decode_typed_event(batch[index], decoder)
                    else:
                        event = decode_event(batch[index])
                        if event is not None and event["type"] == "ERROR":
                            raise watch_error(event.get("object"))
                except ApiError:
                    self._ended = True
                    self._batch = []
                    raise
                if event is None:
                    continue
                return event
            if self._ended:
                raise StopAsyncIteration
            # A checkpoint per block, as the thread hop was: other tasks run and
            # cancellation is seen however fast the events arrive.
            await checkpoint()
            arrived = self._read_arrived()
            if arrived is not None:
                self._batch = self._splitter.feed(arrived)
            else:
                self._batch, self._ended = await self._threads.run(self._read_lines)
            self._next = 0

    def _read_lines(self) -> tuple[list[bytes], bool]:
        pieces = self._read_pieces()
        if pieces:
            return self._splitter.feed(pieces), False
        return self._splitter.finish(), True
