"""Which instance of a step's container the status shows: the placeholder's or the step's.

A step's container lives through up to three instances: the pause placeholder the pod
starts with, the step image the image patch restarts it with, and, when the runtime stops
a step at its timeout by patching the placeholder back, the placeholder again. The
status names one at a time, and its ``image`` field cannot tell them apart: it is the
name the container runtime resolved, and on a node where the pause image carries a
second tag (mirrored or retagged images) the placeholder is reported under that other
name. What cannot be aliased decides instead:

- a container ID belongs to one instance: every ID seen while the pod spec still named
  the placeholder is a placeholder's, any other one seen after the patch is the step's;
- under ``restartPolicy: Never`` the kubelet restarts a container only because its spec
  changed, so a restart count above zero means the image patch took effect;
- the placeholder's image ID, learnt from any container whose spec names the
  placeholder, is the same whatever tag the status reports.

The image name is the last resort, for a reader that joined after the patch and saw
neither (a monitor started late on a single-step pod).
"""

from __future__ import annotations

import msgspec

from buildruntime.informer.image_names import same_image
from buildruntime.informer.snapshots import ContainerState, ContainerStatus


class PlaceholderImages:
    """The image IDs the pod's placeholder containers run, learnt from the statuses of
    containers whose spec names the placeholder (one pod-wide set: every step starts on
    the same image)."""

    def __init__(self, placeholder: str) -> None:
        self.placeholder = placeholder
        self.image_ids: set[str] = set()

    def learn(self, container: ContainerStatus) -> None:
        if container.image_id and container.phase != "waiting":
            self.image_ids.add(container.image_id)


class StepInstances:
    """One step's container instances as the cache saw them, to tell the step image's
    instance from the placeholder's."""

    __slots__ = ("last_step", "placeholder_ids", "step_id", "step_image", "was_patched")

    def __init__(self, step_image: str | None) -> None:
        self.placeholder_ids: set[str] = set()
        """Container IDs seen while the spec named the placeholder."""
        self.step_id: str | None = None
        """The container ID of the step image's instance, once seen."""
        self.step_image = step_image
        """The step's own image, when known (None for a monitor reading another's pod)."""
        self.was_patched = False
        """The spec named the step image at some point."""
        self.last_step: ContainerStatus | None = None
        """The step image's instance as last seen."""

    def placeholder_seen(self, container: ContainerStatus) -> None:
        """The spec names the placeholder and ``container`` is its instance."""
        container_id = container.container_id
        if container_id and container_id != self.step_id:
            self.placeholder_ids.add(container_id)

    def is_step(self, container: ContainerStatus, images: PlaceholderImages) -> bool:
        """Whether ``container``, reported after the spec named the step image, is the
        step image's instance."""
        container_id = container.container_id
        if container.phase == "waiting" or not container_id:
            # Not created yet (pulling, creating, failing to): the status names the spec's
            # image as the kubelet has it, so its name is the one to go by.
            return container.restart_count > 0 or not same_image(
                container.image, images.placeholder
            )
        if container_id == self.step_id:
            return True
        if container_id in self.placeholder_ids:
            return False
        if self.placeholder_ids:
            return True  # a new instance after the patch: the kubelet restarted it
        if container.restart_count > 0:
            return True
        if container.image_id and images.image_ids:
            return container.image_id not in images.image_ids or (
                self.step_image is not None and same_image(self.step_image, images.placeholder)
            )
        return not same_image(container.image, images.placeholder)

    def step_seen(self, container: ContainerStatus) -> None:
        self.was_patched = True
        self.last_step = container
        if container.container_id and container.phase != "waiting":
            self.step_id = container.container_id

    def stopped_view(self, container: ContainerStatus) -> ContainerStatus | None:
        """The step's own instance, when the spec names the placeholder again after the
        step image (the runtime stopped the step), or None when the step never ran.

        While the kubelet has not yet replaced the step's instance, the status is that
        instance (running while it is being stopped, or terminated); once the placeholder
        runs again, the step's end is the status's ``lastState``.
        """
        stopped_before = self.was_patched or (
            # A reader that joined late: only the patches restart a container under
            # restartPolicy Never, and there and back again is two restarts.
            container.restart_count >= 2 and container.last_state.terminated is not None
        )
        if not stopped_before:
            return None
        container_id = container.container_id
        if container_id and container_id == self.step_id:
            return container
        ended = container.last_state.terminated
        if ended is None or (self.step_id and ended.container_id not in (None, self.step_id)):
            # Not replaced yet, as far as this status tells: the step as last seen.
            return self.last_step
        return msgspec.structs.replace(
            container, state=ContainerState(terminated=ended), last_state=ContainerState()
        )
