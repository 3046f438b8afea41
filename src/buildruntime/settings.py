"""The runtime's settings: one typed object, accepted by every constructor.

``Runtime(cluster, settings=RuntimeSettings(...))`` and the keyword form
``Runtime(cluster, delete_timeout=30)`` are the same thing: keywords override the fields
of ``settings`` (or of the defaults), and mypy checks them (:class:`RuntimeOptions`).
``resync_period`` has one home, the reflector's settings; the keyword sets it there, and
giving it twice with different values is an error rather than a silent choice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TypedDict

from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from buildruntime.errors import SpecError
from buildruntime.images import DEFAULT_PAUSE_IMAGE, image_problem
from buildruntime.informer.reflector import ReflectorSettings
from buildruntime.logs import DEFAULT_MEMORY_LIMIT
from buildruntime.volumes import DEFAULT_WORKSPACE_PATH, check_path
from buildruntime.workers import check_worker_id, default_worker_id


@dataclass(frozen=True)
class RuntimeSettings:
    """How a runtime runs its builds. Invalid values raise :class:`SpecError`."""

    pause_image: str = DEFAULT_PAUSE_IMAGE
    """The placeholder every step starts on; the cluster's nodes must be able to pull it.
    It runs nothing but itself, so a step's commands reach the step image as ``args``:
    they run on any image without an ENTRYPOINT (see ``placeholder_image``)."""
    placeholder_image: str | None = None
    """buildruntime's own placeholder (built from deploy/placeholder/), used instead of
    ``pause_image`` when set: it survives a container ``command``, so a step's commands
    replace its image's ENTRYPOINT and run on any image (see :mod:`buildruntime.launch`)."""
    schedule_timeout: float = 120.0
    """How long ``assemble_build`` waits for the pod to be scheduled and its placeholders
    to start."""
    delete_timeout: float = 60.0
    """The bound of ``remove_build`` (draining logs, the delete)."""
    api_timeout: float = 60.0
    """How long a create/patch/delete keeps retrying an unreachable API server."""
    log_memory_limit: int = DEFAULT_MEMORY_LIMIT
    """Per step, log bytes kept in memory before the capture spills to a file."""
    reflector: ReflectorSettings = field(default_factory=ReflectorSettings)
    """Watch timing and backoff, the resync period included."""
    workspace_path: str = DEFAULT_WORKSPACE_PATH
    """Where every step finds the build's workspace, unless the build says otherwise."""
    tracer_provider: TracerProvider | None = None
    """Where the runtime's spans go; None: OpenTelemetry's global provider (a no-op
    until the application sets one). See :mod:`buildruntime.telemetry`."""
    meter_provider: MeterProvider | None = None
    """Where the runtime's metrics go; None: OpenTelemetry's global provider."""
    worker_id: str = field(default_factory=default_worker_id)
    """This worker's identity (a DNS-1123 label, unique among the live workers of the
    namespace: two live workers under one id would share one Lease): its Lease's holder
    and the ``buildruntime.io/worker`` label of its pods. Default: host name and
    process id."""
    lease_duration: float = 30.0
    """How long the worker's Lease lasts unrenewed (its ``leaseDurationSeconds``)."""
    lease_renew_interval: float = 10.0
    """How often the worker renews its Lease (after a failed renewal it retries within a
    second, so it renews as soon as the API server is back)."""
    reap_grace: float = 30.0
    """How much longer than its duration a Lease must go unrenewed before the reaper
    deletes it: it covers an API outage of the holder's own (a worker cut off for 30 s
    renews within ``lease_renew_interval`` + 30 s + 1 s, less than 30 + 30) and clock
    skew when a Lease is judged from its renewTime (see :mod:`buildruntime.reaper`)."""
    reap_interval: float | None = 30.0
    """How often the runtime reaps dead workers' Leases; None: only once, at start."""
    shared_event_watch: bool = True
    """One watch of the namespace's pod Events for all the runtime's builds, split by pod
    uid (True), or one watch per build, of its own pod's Events (False). Events are not
    in the API server's watch cache, so each events watch costs the API server a decode
    of every Event of the namespace: one watch per build makes that cost grow with the
    square of the concurrent builds (bench/RESULTS.md). Both need the same permissions
    (``list`` and ``watch`` on ``events``); a build adopted with ``attach_build`` always
    has a watch of its own, as it must list its pod's past Events."""
    shared_pod_watch: bool = True
    """One watch of the pods labelled with this runtime's ``worker_id`` for all its
    builds, split by pod name (True), or one pod watch per build (False). A watch per
    build costs the API server a list, a watch and a connection for every build
    (bench/RESULTS.md). Both need the same permissions (``list`` and ``watch`` on
    ``pods``); a build adopted with ``attach_build`` always has a watch of its own, as
    its pod carries another worker's label."""

    def __post_init__(self) -> None:
        if not isinstance(self.pause_image, str):
            raise SpecError("pause_image", "must be a string")
        problem = image_problem(self.pause_image)
        if problem:
            raise SpecError("pause_image", problem)
        if self.placeholder_image is not None:
            if not isinstance(self.placeholder_image, str):
                raise SpecError("placeholder_image", "must be a string")
            problem = image_problem(self.placeholder_image)
            if problem:
                raise SpecError("placeholder_image", problem)
        for name in (
            "schedule_timeout",
            "delete_timeout",
            "api_timeout",
            "lease_duration",
            "lease_renew_interval",
        ):
            _require_positive(name, getattr(self, name))
        if self.reap_interval is not None:
            _require_positive("reap_interval", self.reap_interval)
        grace = self.reap_grace
        if isinstance(grace, bool) or not isinstance(grace, int | float) or grace < 0:
            raise SpecError("reap_grace", f"must be a number of seconds >= 0, not {grace!r}")
        if self.lease_renew_interval >= self.lease_duration:
            raise SpecError(
                "lease_renew_interval",
                f"must be shorter than lease_duration ({self.lease_duration!r}), not "
                f"{self.lease_renew_interval!r}: the Lease would lapse between renewals",
            )
        check_worker_id(self.worker_id)
        for name in ("shared_event_watch", "shared_pod_watch"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise SpecError(name, f"must be True or False, not {value!r}")
        _require_positive("resync_period", self.reflector.resync_period)
        limit = self.log_memory_limit
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise SpecError("log_memory_limit", f"must be a number of bytes >= 0, not {limit!r}")
        for name in (
            "schedule_timeout",
            "delete_timeout",
            "api_timeout",
            "lease_duration",
            "lease_renew_interval",
            "reap_grace",
        ):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.reap_interval is not None:
            object.__setattr__(self, "reap_interval", float(self.reap_interval))
        object.__setattr__(
            self, "workspace_path", check_path(self.workspace_path, "workspace_path")
        )
        for name, kind in (("tracer_provider", TracerProvider), ("meter_provider", MeterProvider)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, kind):
                raise SpecError(
                    name, f"must be an OpenTelemetry {kind.__name__}, not {type(value).__name__}"
                )

    @property
    def resync_period(self) -> float:
        return self.reflector.resync_period


class RuntimeOptions(TypedDict, total=False):
    """The settings as keywords of the constructors (``Runtime(cluster, **options)``)."""

    pause_image: str
    placeholder_image: str | None
    schedule_timeout: float
    delete_timeout: float
    resync_period: float
    api_timeout: float
    log_memory_limit: int
    reflector: ReflectorSettings
    workspace_path: str
    tracer_provider: TracerProvider | None
    meter_provider: MeterProvider | None
    worker_id: str
    lease_duration: float
    lease_renew_interval: float
    reap_grace: float
    reap_interval: float | None
    shared_event_watch: bool
    shared_pod_watch: bool


def resolve(settings: RuntimeSettings | None, options: RuntimeOptions) -> RuntimeSettings:
    """``settings`` (or the defaults) with ``options`` applied."""
    base = settings if settings is not None else RuntimeSettings()
    if not isinstance(base, RuntimeSettings):
        raise SpecError("settings", f"must be a RuntimeSettings, not {type(base).__name__}")
    changes = dict(options)
    unknown = set(changes) - set(RuntimeOptions.__annotations__)
    if unknown:
        raise SpecError(sorted(unknown)[0], "is not a setting of the runtime")
    reflector = changes.pop("reflector", base.reflector)
    if not isinstance(reflector, ReflectorSettings):
        raise SpecError("reflector", f"must be a ReflectorSettings, not {type(reflector).__name__}")
    if "resync_period" in changes:
        period = options["resync_period"]
        changes.pop("resync_period")
        _require_positive("resync_period", period)
        given = options.get("reflector")
        if given is not None and given.resync_period not in (
            ReflectorSettings.resync_period,
            period,
        ):
            raise SpecError(
                "resync_period",
                f"given twice: {period!r} and reflector.resync_period="
                f"{given.resync_period!r}; give it once",
            )
        reflector = dataclasses.replace(reflector, resync_period=float(period))
    return dataclasses.replace(base, reflector=reflector, **changes)  # type: ignore[arg-type]


def _require_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise SpecError(name, f"must be a positive number of seconds, not {value!r}")
