"""A per-step runtime, the peer that buildruntime is measured against.

It drives the same pod (the same rendering: one container per step on the pause
placeholder, swapped for the step image by a patch) the way the runtimes that watch and
poll per container do, modelled on Vela's Kubernetes runtime (go-vela/worker
``runtime/kubernetes``) and the executor that calls it:

- ``assemble_build``: one create, and nothing else (no informer to start).
- ``run_container``: one patch of the step's image, then a GET of the pod to read back
  what was applied.
- ``tail_container``: a follow log request, retried with exponential backoff until it
  returns bytes (Vela: ``wait.ExponentialBackoff`` around a ``GetLogs().Stream()`` and a
  ``Peek``; here any byte counts, not 5, and the backoff starts at 0.25 s instead of
  5 s so that the benchmark does not sleep for minutes). A request made while the
  container is still being created gets 400 and is retried; one that reaches the
  placeholder's log ends empty when the placeholder is swapped out, and is retried.
- ``wait_container``: a new pod watch per call (field selector ``metadata.name``, no
  resourceVersion: the current state first), read until the step's container is
  terminated.
- ``inspect_container``: a GET of the pod (the executor inspects after every wait).
- ``remove_build``: one delete.

Unlike Vela, it does not fall for the placeholder: a status counts as the step's only
once it is no longer the placeholder's (another image, or restarted), as buildruntime
does, so both runtimes do the same work and only their API traffic differs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
from _common import CountingCluster

from buildruntime import BuildSpec
from buildruntime.cluster.port import ApiError, NotFoundError, UnavailableError
from buildruntime.images import same_image
from buildruntime.spec import render_pod


@dataclass
class BaselineBuild:
    spec: BuildSpec
    namespace: str
    pod_manifest: dict[str, Any]
    placeholder: str

    @property
    def pod_name(self) -> str:
        return self.spec.pod_name


@dataclass
class BaselineResult:
    step: str
    state: str
    exit_code: int | None = None
    reason: str | None = None


class BaselineRuntime:
    """Per-step API traffic (see the module docstring)."""

    def __init__(
        self,
        cluster: CountingCluster,
        namespace: str,
        *,
        pause_image: str,
        log_backoff: float = 0.25,
        log_backoff_cap: float = 4.0,
        log_tries: int = 8,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.pause_image = pause_image
        self.log_backoff = log_backoff
        self.log_backoff_cap = log_backoff_cap
        self.log_tries = log_tries

    async def setup_build(self, spec: BuildSpec) -> BaselineBuild:
        manifest = render_pod(spec, namespace=self.namespace, pause_image=self.pause_image)
        return BaselineBuild(spec, self.namespace, manifest, spec.pause_image or self.pause_image)

    async def assemble_build(self, build: BaselineBuild) -> None:
        await self.cluster.create_pod(self.namespace, build.pod_manifest)

    async def run_container(self, build: BaselineBuild, step: str) -> None:
        image = build.spec.step(step).image
        patch = {"spec": {"containers": [{"name": step, "image": image}]}}
        await self.cluster.patch_pod(self.namespace, build.pod_name, patch)
        # Read back the pod as patched.
        await self.cluster.get_pod(self.namespace, build.pod_name)

    async def tail_container(self, build: BaselineBuild, step: str) -> AsyncIterator[bytes]:
        """Log lines of the step; retries the request until it yields bytes."""
        delay = self.log_backoff
        for _ in range(self.log_tries):
            got_bytes = False
            pending = b""
            try:
                async with self.cluster.stream_logs(
                    self.namespace, build.pod_name, step, follow=True, timestamps=False
                ) as chunks:
                    async for chunk in chunks:
                        if not chunk:
                            continue
                        got_bytes = True
                        data = pending + chunk
                        lines = data.split(b"\n")
                        pending = lines.pop()
                        for line in lines:
                            yield line
            except NotFoundError:
                return
            except (ApiError, UnavailableError):
                pass  # 400 "waiting to start", or a cut: try again
            if got_bytes:
                if pending:
                    yield pending
                return
            await anyio.sleep(delay)
            delay = min(delay * 2, self.log_backoff_cap)

    async def wait_container(self, build: BaselineBuild, step: str) -> BaselineResult:
        """A fresh watch of the pod, read until the step's container terminated."""
        while True:
            async with self.cluster.watch(
                "pods",
                self.namespace,
                resource_version="",
                field_selector=f"metadata.name={build.pod_name}",
                allow_bookmarks=False,
            ) as events:
                async for event in events:
                    if event.get("type") == "DELETED":
                        return BaselineResult(step, "gone")
                    result = self._terminated(build, step, event.get("object") or {})
                    if result is not None:
                        return result
            # The watch ended without the answer (a server timeout): watch again.

    async def inspect_container(self, build: BaselineBuild, step: str) -> BaselineResult:
        pod = await self.cluster.get_pod(self.namespace, build.pod_name)
        if pod is None:
            return BaselineResult(step, "gone")
        status = self._status(build, step, pod)
        if status is None:
            return BaselineResult(step, "waiting")
        state = status.get("state") or {}
        if state.get("terminated"):
            detail = state["terminated"]
            return BaselineResult(step, "terminated", detail.get("exitCode"), detail.get("reason"))
        return BaselineResult(step, "running" if state.get("running") else "waiting")

    async def remove_build(self, build: BaselineBuild) -> None:
        with contextlib.suppress(NotFoundError):
            await self.cluster.delete_pod(self.namespace, build.pod_name)

    # -- helpers ------------------------------------------------------------------------

    def _status(self, build: BaselineBuild, step: str, pod: dict[str, Any]) -> Any:
        """The step image's container status, or None while only the placeholder's."""
        spec_image = next(
            (
                c.get("image")
                for c in (pod.get("spec") or {}).get("containers") or ()
                if c.get("name") == step
            ),
            None,
        )
        if spec_image is None or same_image(spec_image, build.placeholder):
            return None
        for status in (pod.get("status") or {}).get("containerStatuses") or ():
            if status.get("name") != step:
                continue
            if int(status.get("restartCount") or 0) >= 1 or not same_image(
                status.get("image", ""), build.placeholder
            ):
                return status
        return None

    def _terminated(
        self, build: BaselineBuild, step: str, pod: dict[str, Any]
    ) -> BaselineResult | None:
        status = self._status(build, step, pod)
        if status is None:
            return None
        terminated = (status.get("state") or {}).get("terminated")
        if not terminated:
            return None
        return BaselineResult(
            step, "terminated", terminated.get("exitCode"), terminated.get("reason")
        )
