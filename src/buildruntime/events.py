"""Build-level domain events: the pod monitor's view of a build."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from buildruntime.results import Failure

EventKind = Literal[
    "scheduled", "pulling", "pulled", "started", "completed", "failed", "warning", "deleted"
]


@dataclass(frozen=True, slots=True)
class BuildEvent:
    """Something that happened to a build or one of its steps.

    ``step`` is None for pod-level events (scheduled, deleted, pod warnings). ``failure``
    is set on ``failed``; ``count`` on ``warning`` is how often Kubernetes saw it when it
    was first reported (repeats of the same warning are aggregated, not re-emitted).
    """

    build_id: str
    step: str | None
    kind: EventKind
    at: datetime
    reason: str | None = None
    message: str | None = None
    exit_code: int | None = None
    failure: Failure | None = None
    count: int = 1

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, as ``buildruntime monitor`` prints it."""
        return {
            "build_id": self.build_id,
            "step": self.step,
            "kind": self.kind,
            "reason": self.reason,
            "exit_code": self.exit_code,
            "message": self.message,
            "failure": self.failure.value if self.failure else None,
            "count": self.count,
            "at": self.at.isoformat(),
        }
