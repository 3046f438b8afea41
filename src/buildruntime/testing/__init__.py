"""An in-process stand-in for a Kubernetes API server and one node, for fast tests and
for running a pipeline without a cluster (``--simulate``).

:class:`FakeCluster` implements the :class:`~buildruntime.cluster.port.Cluster` port
(``list``, ``watch``, ``create_pod``, ``patch_pod``, ``delete_pod``, ``stream_logs``);
its node really runs each step as a local subprocess. Beyond the port it offers
``faults`` (:class:`Faults`), ``kill_container``, ``requests`` (one :class:`Request`
per API call), ``open_watches``/``open_log_streams``, ``history`` (every version of a
pod as written) and ``pod_root`` (the directory a pod's containers see as ``/``).

A simulated step gets a container's environment, not the host's, and runs in a working
directory inside its pod's own temporary root; absolute paths other than the working
directory still name the host's files (see :mod:`buildruntime.testing.rootfs`).

A FakeCluster binds to the event loop of its first use; close it with ``aclose()`` or
``async with``.

The modules, one job each: ``apiserver`` (storage, versions, change history), ``watch``,
``selectors``, ``patch`` and ``podspec`` (what the API server does to a pod),
``events`` (the event recorder), ``scheduler``, ``kubelet`` with ``imagestore`` (which
images the node has, what they run, how they are reported), ``imagepull``,
``environment`` (a step's env and command line), ``rootfs`` (each pod's own directory
tree: where working directories and HOME are), ``process``, ``podstatus`` and ``logs``
(the node), ``faults``, ``tasks`` (background work on the caller's event loop),
``leases`` (Leases, and the garbage collection of the pods they own), ``remote`` (a
FakeCluster served to other processes over a Unix socket),
``cluster`` (the facade).
"""

from buildruntime.cluster.port import Request
from buildruntime.testing.cluster import FakeCluster
from buildruntime.testing.faults import Faults
from buildruntime.testing.imagestore import ImageConfig

__all__ = ["FakeCluster", "Faults", "ImageConfig", "Request"]
