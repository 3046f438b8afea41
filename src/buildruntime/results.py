"""What the step APIs return: a step's state and result, and why it failed."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

StepState = Literal["waiting", "running", "terminated"]


class Failure(enum.StrEnum):
    """Why a step did not succeed."""

    APP_ERROR = "APP_ERROR"
    """The step's commands exited non-zero."""
    OOM_KILLED = "OOM_KILLED"
    """The container was killed for exceeding its memory limit."""
    IMAGE_PULL = "IMAGE_PULL"
    """The step image could not be pulled (or was not a valid name, or may not be pulled)."""
    CONTAINER_CREATE = "CONTAINER_CREATE"
    """The kubelet could not create or start the container."""
    POD_DELETED = "POD_DELETED"
    """The build's pod was deleted while the step needed it."""
    EVICTED = "EVICTED"
    """The kubelet evicted the pod (node pressure)."""
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    """The pod's activeDeadlineSeconds passed."""
    NODE_LOST = "NODE_LOST"
    """The node running the pod stopped reporting."""
    TIMEOUT = "TIMEOUT"
    """The step ran longer than its ``timeout``."""
    UNKNOWN = "UNKNOWN"
    """The step ended without success for a reason the runtime does not recognise."""


@dataclass(frozen=True, slots=True)
class StepResult:
    """A step's state as the cache last saw it; final once ``state == "terminated"``."""

    step: str
    state: StepState
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    failure: Failure | None = None

    @property
    def succeeded(self) -> bool:
        """True when the step terminated with exit code 0."""
        return self.state == "terminated" and self.exit_code == 0 and self.failure is None
