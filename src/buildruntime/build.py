"""The handle of one build, as ``Runtime.setup_build`` returns it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from buildruntime.build_view import StepView
from buildruntime.cluster.port import JSON
from buildruntime.controller import BuildController
from buildruntime.errors import SpecError
from buildruntime.events import BuildEvent
from buildruntime.spec import BuildSpec


@dataclass(eq=False)
class Build:
    """The handle of one build, returned by ``Runtime.setup_build``."""

    spec: BuildSpec
    namespace: str
    pod_manifest: JSON
    _controller: BuildController = field(repr=False)

    @property
    def build_id(self) -> str:
        return self.spec.build_id

    @property
    def pod_name(self) -> str:
        return self.spec.pod_name

    def events(self) -> AsyncIterator[BuildEvent]:
        """The build's domain events from its first, in the order the cache saw them,
        until the build is removed."""
        return self._controller.view.build_events.follow()

    def step_states(self, step: str) -> AsyncIterator[StepView]:
        """The step container's state stream: the current state first, then every change
        the cache sees (placeholder and step image alike; ``is_step`` tells them apart),
        until the build is removed."""
        topic = self._controller.view.states.get(step)
        if topic is None:
            raise SpecError("step", f"build {self.build_id} has no step {step!r}")
        return topic.follow(from_latest=True)
