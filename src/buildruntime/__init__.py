"""buildruntime: run CI builds on Kubernetes, one pod per build, one container per step,
with every step API served from an informer cache."""

from buildruntime.build import Build
from buildruntime.errors import (
    AdmissionError,
    BuildAdoptedError,
    BuildRuntimeError,
    ClusterUnavailableError,
    ContainerCreateError,
    ImagePullError,
    LeaseError,
    PodGoneError,
    SchedulingError,
    ServiceError,
    SpecError,
    StepTimeoutError,
    UsageError,
)
from buildruntime.events import BuildEvent
from buildruntime.results import Failure, StepResult
from buildruntime.runtime import Runtime
from buildruntime.secrets import ExistingSecret, RegistryCredentials
from buildruntime.settings import RuntimeSettings
from buildruntime.spec import BuildSpec, StepSpec
from buildruntime.volumes import Workspace

__all__ = [
    "AdmissionError",
    "Build",
    "BuildAdoptedError",
    "BuildEvent",
    "BuildRuntimeError",
    "BuildSpec",
    "ClusterUnavailableError",
    "ContainerCreateError",
    "ExistingSecret",
    "Failure",
    "ImagePullError",
    "LeaseError",
    "PodGoneError",
    "RegistryCredentials",
    "Runtime",
    "RuntimeSettings",
    "SchedulingError",
    "ServiceError",
    "SpecError",
    "StepResult",
    "StepSpec",
    "StepTimeoutError",
    "UsageError",
    "Workspace",
]
