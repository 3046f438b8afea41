"""The kubelet's image manager (``pkg/kubelet/images``), for one pod.

``EnsureImageExists`` as the kubelet does it: ``Pulled`` "already present on machine"
for a present image (unless the pull policy is Always); ``Pulling`` then ``Pulled``
"Successfully pulled image ... in ... (... including waiting). Image size: N bytes." for
a pull; for an image that is not there, ``Failed`` "Failed to pull image ...: rpc error:
code = NotFound ..." and ``Failed`` "Error: ErrImagePull", then while the per-image
back-off lasts ``BackOff`` "Back-off pulling image ..." and ``Failed`` "Error:
ImagePullBackOff"; ``ErrImageNeverPull`` under pull policy Never; ``InvalidImageName``
for a reference that does not parse. Time is scaled down: the back-off starts at 0.2 s
and stops growing at 2 s (the kubelet's starts at 10 s and stops at 5 min).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import anyio

from buildruntime.images import image_problem
from buildruntime.testing.imagestore import pull_error
from buildruntime.testing.objects import JSON
from buildruntime.testing.podstatus import ContainerRecord

BACKOFF_INITIAL = 0.2
BACKOFF_CAP = 2.0

PostEvent = Callable[..., None]
"""``post(reason, message, *, container=..., warning=...)``"""


class Backoff:
    """``flowcontrol.Backoff`` for one key, scaled down."""

    def __init__(self) -> None:
        self.duration = 0.0
        self.until = 0.0
        self.last_error = ""

    def active(self, now: float) -> bool:
        return now < self.until

    def next(self, now: float) -> None:
        self.duration = (
            BACKOFF_INITIAL if self.duration == 0 else min(self.duration * 2, BACKOFF_CAP)
        )
        self.until = now + self.duration


def go_duration(seconds: float) -> str:
    """A duration as Go prints it, truncated to milliseconds (``20ms``, ``1.5s``)."""
    millis = int(seconds * 1000)
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    whole, rest = divmod(millis, 1000)
    return f"{whole}.{rest:03d}".rstrip("0").rstrip(".") + "s"


class ImageManager:
    """Pulls (pretends to) the images of one pod's containers."""

    def __init__(
        self,
        *,
        has_image: Callable[[str], bool],
        pull_delay: float,
        post: PostEvent,
        refused: Callable[[str], str | None] | None = None,
    ) -> None:
        self._has_image = has_image
        self._refused = refused
        """Why the registry refuses to serve an image to this pod (no or wrong
        credentials for a private registry), or None."""
        self._pull_delay = pull_delay
        self._post = post
        self.backoffs: dict[str, Backoff] = {}

    def backoff_until(self, image: str) -> float | None:
        backoff = self.backoffs.get(image)
        return None if backoff is None else backoff.until

    async def ensure(self, record: ContainerRecord, spec: JSON) -> bool:
        """``EnsureImageExists``: True when the image is there; otherwise records the
        waiting reason on ``record`` and posts the events a kubelet posts."""
        name = record.name
        image: str = spec["image"]
        policy = spec.get("imagePullPolicy", "IfNotPresent")
        if image_problem(image) is not None:
            message = (
                f'Failed to apply default image tag "{image}": couldn\'t parse image name '
                f'"{image}": invalid reference format'
            )
            self._post("InspectFailed", message, container=name, warning=True)
            self._post("Failed", "Error: InvalidImageName", container=name, warning=True)
            record.waiting = ("InvalidImageName", message)
            return False
        present = self._has_image(image)
        if policy == "Never" and not present:
            message = f'Container image "{image}" is not present with pull policy of Never'
            self._post("ErrImageNeverPull", message, container=name, warning=True)
            self._post("Failed", "Error: ErrImageNeverPull", container=name, warning=True)
            record.waiting = ("ErrImageNeverPull", message)
            return False
        if present and policy != "Always":
            self._post(
                "Pulled", f'Container image "{image}" already present on machine', container=name
            )
            return True
        backoff = self.backoffs.setdefault(image, Backoff())
        now = anyio.current_time()
        if backoff.active(now):
            message = f'Back-off pulling image "{image}"'
            self._post("BackOff", message, container=name)
            self._post("Failed", "Error: ImagePullBackOff", container=name, warning=True)
            record.waiting = ("ImagePullBackOff", f"{message}: ErrImagePull: {backoff.last_error}")
            return False
        self._post("Pulling", f'Pulling image "{image}"', container=name)
        started = anyio.current_time()
        await anyio.sleep(self._pull_delay)
        took = go_duration(anyio.current_time() - started)
        refusal = self._refused(image) if self._refused is not None else None
        if present and refusal is None:
            size = 1_000_000 + int(hashlib.sha256(image.encode()).hexdigest()[:6], 16)
            self._post(
                "Pulled",
                f'Successfully pulled image "{image}" in {took} ({took} including waiting). '
                f"Image size: {size} bytes.",
                container=name,
            )
            self.backoffs.pop(image, None)
            return True
        error = refusal or pull_error(image)
        self._post(
            "Failed", f'Failed to pull image "{image}": {error}', container=name, warning=True
        )
        backoff.next(anyio.current_time())
        backoff.last_error = error
        self._post("Failed", "Error: ErrImagePull", container=name, warning=True)
        record.waiting = ("ErrImagePull", error)
        return False
