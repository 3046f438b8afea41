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

How this differs from a real container: only the working directory and HOME are moved.
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


class PodRoot:
    """The directory standing in for ``/`` in every container of one pod."""

    def __init__(self, namespace: str, name: str) -> None:
        prefix = f"buildruntime-pod-{_safe_name(namespace)}-{_safe_name(name)}-"
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        self.home = self.path / "root"
        self.home.mkdir()

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
                if path != self.path:
                    path = path.parent
                continue
            candidate = path / part
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
