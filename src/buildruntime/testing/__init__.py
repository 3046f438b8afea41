"""An in-process stand-in for a Kubernetes API server and one node, for fast tests and
for running a pipeline without a cluster (``--simulate``).

``FakeCluster`` implements the :class:`~buildruntime.cluster.port.Cluster` port; its
node really runs each step as a local subprocess. See :mod:`.cluster` for the event loop
model (a FakeCluster binds to the event loop of its first use).
"""

from buildruntime.cluster.port import Request
from buildruntime.testing.cluster import FakeCluster
from buildruntime.testing.faults import Faults

__all__ = ["FakeCluster", "Faults", "Request"]
