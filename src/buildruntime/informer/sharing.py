"""A pod's new snapshot shares what did not change with the snapshot cached before it.

Every watch event carries the whole object, so a pod is decoded in full each time the
kubelet writes its status, although between two writes one or two containers changed
and the spec, the labels, the conditions and the other containers' statuses did not.
The cache keeps one copy of those parts: where a part of the new snapshot equals the old
snapshot's, the new snapshot takes the old one's object. Readers cannot tell (snapshots
are immutable and equal either way). What changes is the cost: the duplicate is freed at
once, while it is still in the processor's cache, instead of when the old snapshot is
dropped long after; comparing two snapshots, as the fan-out does container by container,
finds the shared parts identical without looking inside; and the snapshots a build
retains share most of their memory.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from buildruntime.informer.snapshots import PodSnapshot

T = TypeVar("T")


def _same(old: T, new: T) -> T:
    return old if old == new else new


def share_unchanged(old: PodSnapshot, new: PodSnapshot) -> PodSnapshot:
    """``new``, with each part that equals ``old``'s replaced by ``old``'s object.

    Container statuses are matched by position (the kubelet lists them in the order of
    the spec); the spec, the conditions, the labels and the annotations as wholes.
    """
    before = old.status.container_statuses or ()
    after = new.status.container_statuses
    if after and before:
        kept = [then if now == then else now for now, then in zip(after, before, strict=False)]
        after = tuple(kept) + after[len(kept) :]
    status = msgspec.structs.replace(
        new.status,
        container_statuses=after,
        conditions=_same(old.status.conditions, new.status.conditions),
    )
    metadata = msgspec.structs.replace(
        new.metadata,
        labels=_same(old.metadata.labels, new.metadata.labels),
        annotations=_same(old.metadata.annotations, new.metadata.annotations),
    )
    return PodSnapshot(metadata=metadata, spec=_same(old.spec, new.spec), status=status)
