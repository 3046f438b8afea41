"""Each simulated pod's own directory tree: what stands in for its containers' root
filesystem, so that a step's working directory never lands in the user's own
directories on the host.

- The kubelet's pod worker creates a temporary **pod root** when it starts the pod
  (``<tmp>/buildruntime-pod-<namespace>-<name>-<random>/``, with ``root/`` in it) and
  removes it with everything in it when the pod is deleted: once its processes are gone
  and before the pod leaves the API when the node stops a running pod; just after the
  pod left when the API server removed it at once (a finished pod, a grace period of
  0), as a kubelet cleans up after such a pod; or when the cluster closes. It outlives
  the containers, like the pod's volumes, so a finished pod's files can be looked at.
- All containers of the pod share it: a file one step writes in its working directory
  is there for a later step with the same working directory.
- A container's ``workingDir`` ``/x/y`` is ``<pod root>/x/y``, created on demand as a
  container runtime creates a missing working directory. Without ``workingDir`` a
  container runs in ``<pod root>`` itself, the stand-in for ``/``. ``HOME`` is
  ``<pod root>/root``.
- The path is resolved inside the pod root as runc resolves it inside a container's
  rootfs (``filepath-securejoin``): ``..`` stops at the root, and a symbolic link is
  followed relative to the root, an absolute target included, so neither a ``workingDir``
  of ``/../..`` nor a link a step made to a host directory leads out of it. A path whose
  component is not a directory makes the container fail to start (``StartError``).

- Volumes: an ``emptyDir`` is a directory of the pod root at its mount path (every
  container of the pod sees the same one, as every container mounting it would). A
  ``persistentVolumeClaim`` or ``hostPath`` is mounted: its mount path leads to a
  directory of the simulated node (:class:`NodeVolumes`) that outlives the pod. Other
  sources (configMap, secret) are empty directories: their contents are not modelled.
  An environment value that is exactly a mount path or the working directory (the
  workspace's ``CI_WORKSPACE``) is given to the process as its host path, so that
  ``cd "$CI_WORKSPACE"`` works.

How this differs from a real container: only the working directory, HOME and volumes
are moved.
The process still sees the host's filesystem, so ``pwd`` prints the host path of the
working directory (``<pod root>/x/y``, not ``/x/y``), and every other absolute path a
script names (``/tmp/out``, ``/etc/hosts``, ``cd /src``) is the host's own.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

_MAX_LINKS = 40  # like the kernel's ELOOP limit


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in text)[:60]


class NodeVolumes:
    """The simulated node's own directories: each PersistentVolumeClaim's volume and each
    hostPath, kept across pods (as a bound volume and the node's disk are) until the
    cluster closes."""

    def __init__(self) -> None:
        self._path: Path | None = None
        """Made on first use: most simulated builds mount no such volume."""

    @property
    def path(self) -> Path:
        if self._path is None:
            self._path = Path(tempfile.mkdtemp(prefix="buildruntime-node-"))
        return self._path

    def claim(self, namespace: str, claim: str) -> Path:
        path = self.path / "claims" / _safe_name(namespace) / _safe_name(claim)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def host_path(self, host_path: str) -> Path:
        path = self.path / "host" / _safe_name(host_path.strip("/").replace("/", "."))
        path.mkdir(parents=True, exist_ok=True)
        return path

    def remove(self) -> None:
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None


class PodRoot:
    """The directory standing in for ``/`` in every container of one pod."""

    def __init__(self, namespace: str, name: str) -> None:
        prefix = f"buildruntime-pod-{_safe_name(namespace)}-{_safe_name(name)}-"
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        self.home = self.path / "root"
        self.home.mkdir()
        self._mounts: dict[Path, Path] = {}
        """Mount points inside the root, to the node directories mounted there."""

    def mount(self, container_path: str, source: Path) -> None:
        """Mount the node directory ``source`` at ``container_path`` in every container."""
        point = self.path.joinpath(*[p for p in container_path.split("/") if p])
        self._mounts[point] = source

    def host_path(self, container_path: str) -> Path | None:
        """The host path of a container path that names a mount point or a directory
        (made when missing), or None when it cannot be one."""
        try:
            return self.working_dir(container_path)
        except OSError:
            return None

    def working_dir(self, container_path: str | None) -> Path:
        """The host directory for the container path ``container_path`` (the pod root
        for None), created when missing. Raises :class:`OSError` (``ENOTDIR``,
        ``ELOOP``...) when it cannot be made a directory inside the pod root."""
        path = self.path
        pending = [p for p in (container_path or "/").split("/") if p]
        pending.reverse()  # a stack: the next component last
        links = 0
        while pending:
            part = pending.pop()
            if part == ".":
                continue
            if part == "..":
                points = [point for point, source in self._mounts.items() if source == path]
                if points:
                    path = points[0].parent  # up from a mounted volume: where it is mounted
                elif path != self.path:
                    path = path.parent
                continue
            candidate = path / part
            if candidate in self._mounts:
                path = self._mounts[candidate]
                continue
            if candidate.is_symlink():
                links += 1
                if links > _MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), container_path)
                target = os.readlink(candidate)
                if target.startswith("/"):
                    path = self.path
                pending.extend(reversed([p for p in target.split("/") if p]))
                continue
            if not candidate.exists():
                candidate.mkdir()
            elif not candidate.is_dir():
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), container_path)
            path = candidate
        return path

    def remove(self) -> None:
        """Remove the tree. On the event loop, not in a worker thread: the fake cluster
        starts no threads (callers check that it leaves none behind), and a simulated
        build's tree is small."""
        shutil.rmtree(self.path, ignore_errors=True)
