"""Which containers of a pod may have changed between two snapshots of it.

The kubelet's status manager writes a pod's whole status whenever any part of it changes
(one container starting or ending, a condition's transition), and each write reaches the
watch as a new snapshot with every container's status in it. Between two snapshots of a
build's pod one or two containers changed, usually, whatever the number of steps: the
fan-out re-derives those and leaves the others as they were.

The kubelet lists container statuses in the order of the pod spec, so two snapshots are
compared position by position; wherever two statuses differ, both their names count as
changed, so a reordered list, or a status that appeared or vanished in the place of
another, is never taken for "unchanged".
"""

from __future__ import annotations

from buildruntime.informer.snapshots import PodSnapshot


def changed_containers(old: PodSnapshot | None, new: PodSnapshot) -> frozenset[str] | None:
    """The names of the containers whose spec image or status may differ between ``old``
    and ``new``; None when any may (no ``old``, another spec, statuses added or removed)."""
    if old is None or old.spec.containers != new.spec.containers:
        return None
    before = old.containers
    after = new.containers
    if len(before) != len(after):
        return None
    # The cache shares unchanged statuses between snapshots: most are the same object.
    pairs = [
        (now, then)
        for now, then in zip(after, before, strict=True)
        if now is not then and now != then
    ]
    if not pairs:
        return frozenset()
    return frozenset(now.name for now, _ in pairs) | {then.name for _, then in pairs}
