"""One watch of a runtime's pods for every build of the runtime, split by pod name.

Kubernetes behaviour handled here:

- A pods watch per build costs the API server, for every build, a LIST (a consistent
  read: a round trip to etcd for its current revision before the watch cache answers),
  a watcher in the watch cache, and (the client speaks HTTP/1.1, one stream per
  connection) a connection with its TLS handshake; the watch cache then tests every pod
  event of the namespace against every build's selector. One watch of the pods labelled
  with the runtime's worker id (every pod the runtime creates carries it) costs that
  once per runtime (bench/RESULTS.md, "Server cost"). Both need the same permissions:
  ``list`` and ``watch`` on ``pods``, which a label selector does not narrow.
- A build's pod name is known before the pod exists, so a build follows it before
  sending the create: the pod's ADDED arrives on the watch as it would on the build's
  own. A build that follows a name the watch already knows (a pod left over from an
  earlier build of the same id, still terminating) is given that pod at once, as its own
  LIST would have.
- On a relist (a 410 Gone, the resync period) each follower receives its own pod's part
  of the list as a replace, an empty one if its pod is gone, as its own reflector would.
- The watch runs from the first follower until the last leaves: nothing stays open
  between builds, and the next follower starts it again with a LIST. A watch that was
  stopped may still deliver what it had in hand; each callback carries the number of
  the watch it came from, and what an old one delivers is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import anyio
from anyio.abc import TaskGroup

from buildruntime.cluster.port import Cluster
from buildruntime.informer.decoders import POD_SNAPSHOTS
from buildruntime.informer.reflector import (
    UNOBSERVED,
    Reflector,
    ReflectorSettings,
    WatchObserver,
)
from buildruntime.informer.snapshots import PodSnapshot
from buildruntime.informer.watch_task import WatchTask

ReplacePods = Callable[[list[PodSnapshot]], None]
ApplyPod = Callable[[str, PodSnapshot], None]


class _Follower:
    __slots__ = ("apply", "error", "failed", "replace")

    def __init__(self, replace: ReplacePods, apply: ApplyPod) -> None:
        self.replace = replace
        self.apply = apply
        self.failed = anyio.Event()
        self.error: Exception | None = None


class PodFollowing:
    """One build's share of the watch: its pod, until :meth:`close`."""

    __slots__ = ("_follower", "_name", "_watch", "reflector", "synced")

    def __init__(
        self,
        watch: SharedPodWatch,
        name: str,
        follower: _Follower,
        reflector: Reflector[PodSnapshot],
    ) -> None:
        self._watch = watch
        self._name = name
        self._follower = follower
        self.reflector = reflector
        """The shared watch's reflector (its resourceVersion, its last error)."""
        self.synced = reflector.synced
        """Set once the watch has listed (the follower then has its pod, if it exists)."""

    def close(self) -> None:
        """Stop receiving the pod. Safe to call more than once."""
        self._watch.unfollow(self._name, self._follower)

    async def failure(self) -> Exception:
        """Wait until the watch stops on an error no retry can fix (a bug), and return
        it: every build that follows the watch has lost its pod's updates."""
        await self._follower.failed.wait()
        assert self._follower.error is not None
        return self._follower.error


class SharedPodWatch:
    """The pods matching ``label_selector``, routed to the builds that follow their name.

    Runs in the task group given to :meth:`open` (the runtime's), from the first
    :meth:`follow` until the last :meth:`PodFollowing.close`, or :meth:`close`.
    """

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        label_selector: str,
        *,
        settings: ReflectorSettings | None = None,
        observer: WatchObserver = UNOBSERVED,
    ) -> None:
        self._cluster = cluster
        self._namespace = namespace
        self._label_selector = label_selector
        self._settings = settings
        self._observer = observer
        self._task = WatchTask("shared pods watch")
        self.reflector: Reflector[PodSnapshot] | None = None
        self._followers: dict[str, _Follower] = {}
        self._pods: dict[str, PodSnapshot] = {}
        """The running watch's pods by name, for a build that follows one it already has."""
        self._listed = False
        self._generation = 0
        """Which watch is the running one: a stopped one's callbacks carry an older
        number."""

    def open(self, task_group: TaskGroup) -> None:
        """Where the watch will run once a build follows a pod."""
        self._task.open(task_group)

    def close(self) -> None:
        """Stop the watch and forget the task group: a later :meth:`open` starts
        afresh."""
        self._stop()
        self._task.close()
        self._followers.clear()

    def follow(self, name: str, *, replace: ReplacePods, apply: ApplyPod) -> PodFollowing:
        """Route the pod called ``name`` to ``replace``/``apply``: from the watch's list
        if it has not listed yet, at once (with what it has of the pod) if it has. A
        name already followed goes to the new follower (the runtime lets a build id be
        set up again only once its earlier build is gone)."""
        if self.reflector is None:
            self._start()
        assert self.reflector is not None
        follower = self._followers[name] = _Follower(replace, apply)
        if self._listed:
            pod = self._pods.get(name)
            replace([pod] if pod is not None else [])
        return PodFollowing(self, name, follower, self.reflector)

    def unfollow(self, name: str, follower: _Follower) -> None:
        """Stop routing ``name`` to ``follower`` (not to a later follower of the same
        name: a build id used again)."""
        if self._followers.get(name) is not follower:
            return
        del self._followers[name]
        if not self._followers:
            self._stop()

    def _start(self) -> None:
        self._generation += 1
        reflector = Reflector(
            self._cluster,
            "pods",
            self._namespace,
            label_selector=self._label_selector,
            decoder=POD_SNAPSHOTS,
            replace=partial(self._replace, self._generation),
            apply=partial(self._apply, self._generation),
            settings=self._settings,
            observer=self._observer,
        )
        self.reflector = reflector
        self._pods = {}
        self._listed = False
        self._task.start(partial(self._run, reflector, self._generation))

    def _stop(self) -> None:
        self._task.stop()
        self.reflector = None
        self._pods = {}
        self._listed = False

    async def _run(self, reflector: Reflector[PodSnapshot], generation: int) -> None:
        try:
            await reflector.run()
        except Exception as error:
            # The reflector retries every fault of the cluster; what reaches here is a
            # bug. It fails the builds that follow (each says so), not the runtime: the
            # next build starts a watch afresh.
            if generation != self._generation:
                return
            followers = list(self._followers.values())
            self._followers.clear()
            self._stop()
            for follower in followers:
                follower.error = error
                follower.failed.set()

    # -- the reflector's callbacks --------------------------------------------------------

    def _replace(self, generation: int, items: list[PodSnapshot]) -> None:
        if generation != self._generation or self.reflector is None:
            return  # a stopped watch's last delivery
        self._pods = {pod.name: pod for pod in items}
        self._listed = True
        for name, follower in list(self._followers.items()):
            pod = self._pods.get(name)
            follower.replace([pod] if pod is not None else [])

    def _apply(self, generation: int, kind: str, pod: PodSnapshot) -> None:
        if generation != self._generation or self.reflector is None:
            return
        if kind == "DELETED":
            self._pods.pop(pod.name, None)
        else:
            self._pods[pod.name] = pod
        follower = self._followers.get(pod.name)
        if follower is not None:
            follower.apply(kind, pod)
