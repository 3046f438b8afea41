"""Pipeline files: a YAML description of a build, loaded into a :class:`BuildSpec`.

```yaml
build_id: hello-1          # optional: generated from the file name when absent
labels: {team: ci}         # optional, like annotations, service_account, node_selector,
                           # pause_image
steps:
  - name: greet
    image: busybox
    commands: ["echo hello", "echo done"]
    environment: {GREETING: hi}  # optional (alias: env), like entrypoint, working_dir,
                                 # pull_policy, timeout, resources
  - name: notify
    image: busybox
    commands: ["echo the build failed"]
    when: {status: failure}      # run only after a failure (default: success)
    failure: ignore              # a failure of this step does not fail the build
    depends_on: [greet]          # run once greet finished (a DAG)
```

Services, the workspace and volumes, in Woodpecker's and Drone's spelling:

```yaml
workspace: /src            # or {path: /src, size_limit: 2Gi, medium: Memory, claim: pvc}
volumes:                   # name -> Kubernetes volume source
  cache: {persistentVolumeClaim: {claimName: build-cache}}
services:                  # detached steps, started before the steps, in file order
  - name: db
    image: postgres:16
    ports: [5432]          # ready once 5432 accepts connections
steps:
  - name: test
    image: golang:1.23
    volumes: ["cache:/root/.cache"]   # name:/path
    commands: ["go test ./..."]
```

A service takes a step's keys (not ``when``, ``failure`` or ``depends_on``: services
start before every step); a step with ``detach: true`` is a service started at its
turn. Services share the steps' names: a step and a service cannot have the same one.

Step order, in Woodpecker's and Drone's terms:

- Without any ``depends_on`` in the file, steps run one after another in file order.
- Once any step declares ``depends_on``, the file is a DAG: a step starts when every
  step it names has finished (succeeded, failed or been skipped), steps with no
  ``depends_on`` depend on nothing and start at once, and independent steps run at the
  same time.
- When a step's turn comes, it runs only if the build's status so far is one its
  ``when: {status: ...}`` lists: ``success`` (the default) while no step has failed,
  ``failure`` once one has. Otherwise it is skipped. A step with ``failure: ignore``
  never makes the build's status a failure.

:func:`load_pipeline_file` and the other ``load_pipeline*`` functions give the
:class:`BuildSpec` the runtime takes; :func:`load_plan_file` (and ``load_plan_text``,
``plan_from_data``) give a :class:`PipelinePlan`: that spec plus each step's rules.

Every problem, from a YAML syntax error to a misspelt key deep in a step, raises one
:class:`SpecError` whose field names where it is (``steps[1].image``,
``steps[0]: unknown key 'comands'``), never a bare ``KeyError`` or ``TypeError``.

Plain scalars where strings are expected in ``environment``, ``labels``, ``annotations`` and
``node_selector`` values (``CGO_ENABLED: 0``, ``DEBUG: true``) are taken as the strings
they were written as, since that is what a YAML author means there.

Secrets, private registries and where the pod runs:

```yaml
secrets:                   # name -> where its value comes from, never the value itself
  deploy_token: {from_env: DEPLOY_TOKEN}
  ssh_key: {from_file: keys/id_ed25519}   # relative to this file's directory
image_pull_secrets: [corp-pull]           # existing kubernetes.io/dockerconfigjson Secrets
registries:
  registry.example.com: {username: ci, password: {from_env: REGISTRY_TOKEN}}
tolerations: [{key: dedicated, operator: Equal, value: ci, effect: NoSchedule}]
security_context: {runAsNonRoot: true}    # the pod's, in Kubernetes' spelling
steps:
  - name: deploy
    image: alpine:3.20
    secrets:
      - deploy_token                            # $deploy_token
      - {source: deploy_token, target: TOKEN}   # $TOKEN
      - {secret: db-creds, key: password, target: DB_PASS}   # an existing Secret
    environment:
      API_KEY: {from_secret: deploy_token}      # Drone's and Woodpecker's spelling
    security_context: {runAsUser: 1000}
```

A value is read when the file is loaded: from the environment of the process that loads
it (``from_env``; unset or empty is an error), or from a file (``from_file``; UTF-8, at
most 1 MiB, one trailing newline stripped, empty is an error). Writing the value itself
in the file takes ``{value: ...}`` and a top-level ``allow_literal_secrets: true``: a
value in a pipeline file is in the repository, for every reader of it. No error names a
value: they name the secret, and the variable or file it was to come from.
"""

from __future__ import annotations

import difflib
import math
import os
import posixpath
import re
import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml

from buildruntime.errors import SpecError
from buildruntime.names import DNS1123_SUBDOMAIN
from buildruntime.pod_policy import POD_FIELDS
from buildruntime.secrets import ExistingSecret, RegistryCredentials, SecretValue
from buildruntime.spec import PULL_POLICIES, BuildSpec, StepSpec
from buildruntime.volumes import DEFAULT_WORKSPACE_PATH, VOLUME_KINDS, Workspace, check_volumes

__all__ = [
    "PipelinePlan",
    "StepRules",
    "load_pipeline",
    "load_pipeline_file",
    "load_pipeline_text",
    "load_plan_file",
    "load_plan_text",
    "plan_from_data",
]

TOP_LEVEL_KEY_HELP = {
    "build_id": "a DNS-1123 label unique in the namespace (else generated)",
    "steps": "the list of steps (required), run as step order says",
    "services": "detached steps (same keys), started before the steps",
    "workspace": "a path, or {path, size_limit, medium: Memory, claim}",
    "volumes": "name to volume source, such as {configMap: {name: x}}",
    "labels": "extra labels of the build's pod (string to string)",
    "annotations": "annotations of the build's pod (string to string)",
    "service_account": "the service account the pod runs as",
    "node_selector": "node labels the pod must run on (string to string)",
    "pause_image": "placeholder of steps not started (default: --pause-image)",
    "secrets": "name to {from_env: VAR} or {from_file: path}",
    "allow_literal_secrets": "true: a secret may be {value: ...} in the file itself",
    "image_pull_secrets": "existing dockerconfigjson Secrets to pull images with",
    "registries": "host to {username, password: {from_env: VAR}}",
    "tolerations": "the pod's tolerations, a list in Kubernetes' spelling",
    "affinity": "the pod's affinity, in Kubernetes' spelling",
    "runtime_class_name": "the pod's RuntimeClass (gVisor, Kata, ...)",
    "priority_class_name": "the pod's PriorityClass",
    "security_context": "the pod's securityContext, in Kubernetes' spelling",
    "dns_config": "the pod's dnsConfig, in Kubernetes' spelling",
    "dns_policy": "the pod's dnsPolicy (ClusterFirst, Default, None, ...)",
    "pod_overrides": "a strategic merge patch of the rendered pod, for the rest",
}
"""Every key a pipeline file's top level accepts, with one line about it (``run --help``
prints them)."""
STEP_KEY_HELP = {
    "name": "a DNS-1123 label, unique in the pipeline (required)",
    "image": "the image the step runs in (required)",
    "commands": "shell lines, run in order until one fails",
    "entrypoint": "the list that runs the script (default: [/bin/sh, -c])",
    "environment": "environment variables (string to string)",
    "env": "alias of environment (give one of the two)",
    "working_dir": "the directory the commands run in",
    "pull_policy": "Always, IfNotPresent (default) or Never",
    "timeout": "seconds the step may run before it fails with TIMEOUT",
    "resources": "{requests: {cpu: ..., memory: ...}, limits: {...}}",
    "failure": "fail (default), or ignore: the build goes on as if it passed",
    "when": "{status: success (default) | failure | [success, failure]}",
    "depends_on": "the steps to wait for (a DAG, see step order)",
    "detach": "true: a service, started at its turn and never awaited",
    "ports": "TCP ports of a service: ready once the first one listens",
    "volumes": 'the volumes it mounts, each "name:/path"',
    "secrets": "the secrets it gets as environment variables",
    "security_context": "the container's securityContext, in Kubernetes' spelling",
    "privileged": "true: run the step's container privileged",
}
"""Every key a step accepts, with one line about it."""
STEP_ORDER_HELP = (
    "Without depends_on anywhere, steps run one after another in file order. Once",
    "any step has depends_on, a step starts when every step it names has finished",
    "(ok, failed or skipped), steps without depends_on depend on nothing and",
    "start at once, and independent steps run at the same time. When its turn",
    "comes, a step runs only if when.status holds the build's status so far:",
    "failure once a step failed (one with failure: ignore never counts; the",
    "summary shows it as failed (ignored)), success before that; otherwise it is",
    "skipped. A build whose pod is gone runs no more steps. Services start first,",
    "one after another in file order, each awaited until it is ready (its first",
    "port accepts connections); a detached step's dependants start once it is",
    "ready. Nothing waits for a service to end: removing the build stops it. A",
    "service that is never ready fails the build.",
)
"""How steps are ordered and chosen to run, for ``run --help``."""
SECRETS_HELP = (
    "Top-level secrets name each value and say where it comes from, never the",
    "value itself: {from_env: VAR} (the variable must be set and not empty) or",
    "{from_file: path} (relative to the pipeline file's directory; UTF-8, at most",
    "1 MiB, one trailing newline stripped, not empty). {value: ...} writes it in",
    "the file, and is refused unless allow_literal_secrets: true. A step's secrets",
    "list gives each to it as an environment variable: NAME (a variable of the",
    "same name), {source: NAME, target: VAR}, or {secret: SECRET, key: KEY,",
    "target: VAR} for a key of a Secret already in the namespace; environment:",
    "{VAR: {from_secret: NAME}} does the same. Every value is shown as ********",
    "in the output (values shorter than 4 characters are not masked); the pod",
    "spec holds none, only references to the build's own Secret.",
)
"""Where secrets come from and how steps get them, for ``run --help``."""
TOP_LEVEL_KEYS = tuple(TOP_LEVEL_KEY_HELP)
STEP_KEYS = tuple(STEP_KEY_HELP)
RULE_KEYS = ("failure", "when", "depends_on")
"""Step keys that say when a step runs: services have none (they start first)."""
SERVICE_KEYS = tuple(key for key in STEP_KEYS if key not in RULE_KEYS)
WORKSPACE_KEYS = ("path", "size_limit", "medium", "claim")
POLICY_KEYS = (*POD_FIELDS, "pod_overrides")
"""Top-level keys passed to the pod as written (BuildSpec's fields of the same name)."""
SECRET_SOURCES = ("from_env", "from_file", "value")
"""Where a secret's value comes from: the one key of its mapping."""
STEP_SECRET_KEYS = ("source", "target")
EXISTING_SECRET_KEYS = ("secret", "key", "target")
REGISTRY_KEYS = ("username", "password")
MAX_SECRET_BYTES = 1024 * 1024
"""The most a ``from_file`` secret may hold: all a Kubernetes Secret can."""

FAILURE_POLICIES = ("fail", "ignore")
"""Values of a step's ``failure``: Woodpecker's and Drone's spelling."""
STATUSES = ("success", "failure")
"""Values of a step's ``when: {status: ...}``."""
WHEN_KEYS = ("status",)

Status = Literal["success", "failure"]


@dataclass(frozen=True)
class StepRules:
    """How a step takes part in its build, beyond its container: what the file said
    under ``failure``, ``when`` and ``depends_on``."""

    failure: Literal["fail", "ignore"] = "fail"
    when_status: frozenset[Status] = frozenset({"success"})
    depends_on: tuple[str, ...] | None = None
    """The steps named under ``depends_on``; None when the step has no such key."""

    @property
    def ignores_failure(self) -> bool:
        return self.failure == "ignore"

    def runs_when(self, status: Status) -> bool:
        return status in self.when_status


@dataclass(frozen=True)
class PipelinePlan:
    """A pipeline file: the :class:`BuildSpec` the runtime takes and each step's rules."""

    spec: BuildSpec
    rules: Mapping[str, StepRules] = field(default_factory=dict)
    services: tuple[str, ...] = ()
    """The top-level ``services``, in file order: detached steps of the spec that start
    before every step (a ``detach: true`` step of ``steps`` is not one of them: it
    starts at its turn)."""

    def __post_init__(self) -> None:
        # Every step has rules: the defaults where the file said nothing.
        full = {step.name: self.rules.get(step.name, StepRules()) for step in self.spec.steps}
        object.__setattr__(self, "rules", MappingProxyType(full))
        object.__setattr__(self, "services", tuple(self.services))
        for name in self.services:
            if not self.spec.step(name).detach:
                raise SpecError(f"services[{name}]", "a service must be a detached step")

    @property
    def is_dag(self) -> bool:
        """Whether any step declares ``depends_on`` (Woodpecker's rule: then steps
        without it depend on nothing)."""
        return any(rules.depends_on is not None for rules in self.rules.values())

    def needs(self, step: str) -> tuple[str, ...]:
        """The steps that must have finished before ``step`` starts: its
        ``depends_on`` in a DAG, else the step before it in the file."""
        if step in self.services:
            return ()  # started before the steps, one after another
        if self.is_dag:
            return self.rules[step].depends_on or ()
        names = [s.name for s in self.spec.steps if s.name not in self.services]
        index = names.index(step)
        return (names[index - 1],) if index else ()


_MAX_BUILD_ID = 63
_SUFFIX_HEX = 6  # characters of random hex after the file stem


def load_pipeline(path_or_text: str | os.PathLike[str]) -> BuildSpec:
    """Load a pipeline from a file path or from YAML text.

    A :class:`os.PathLike` is always a file. A ``str`` is a file when it is one line
    naming an existing file or ending in ``.yaml``/``.yml``; otherwise it is the YAML
    text itself. Raises :class:`SpecError` for every problem, the unreadable file
    included.
    """
    if isinstance(path_or_text, os.PathLike):
        return load_pipeline_file(path_or_text)
    if not isinstance(path_or_text, str):
        raise SpecError(
            "pipeline", f"expected a path or YAML text, not {type(path_or_text).__name__}"
        )
    if _looks_like_path(path_or_text):
        return load_pipeline_file(path_or_text)
    return load_pipeline_text(path_or_text)


def _looks_like_path(text: str) -> bool:
    if not text or "\n" in text or "\r" in text or "\0" in text:
        return False
    if text.endswith((".yaml", ".yml")):
        return True
    try:
        return os.path.isfile(text)
    except (OSError, ValueError):
        return False


def load_pipeline_file(path: str | os.PathLike[str]) -> BuildSpec:
    """Load the pipeline in ``path``; the generated build id starts with its stem."""
    return load_plan_file(path).spec


def load_plan_file(path: str | os.PathLike[str]) -> PipelinePlan:
    """Like :func:`load_pipeline_file`, with each step's rules."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise SpecError("pipeline", f"{file}: no such file") from None
    except IsADirectoryError:
        raise SpecError("pipeline", f"{file}: is a directory, not a pipeline file") from None
    except OSError as error:
        raise SpecError("pipeline", f"{file}: cannot read: {error.strerror or error}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SpecError(
            "pipeline", f"{file}: not UTF-8 text (byte {error.start}: {error.reason})"
        ) from None
    # A from_file secret's path is relative to the pipeline file, wherever it is run from.
    return load_plan_text(text, name=str(file), stem=file.stem, base_dir=file.parent)


def load_pipeline_text(
    text: str,
    *,
    name: str = "<pipeline>",
    stem: str = "pipeline",
    base_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> BuildSpec:
    """Load a pipeline from YAML ``text``. ``name`` is what errors call the source;
    ``stem`` starts a generated build id; ``base_dir`` is where relative ``from_file``
    paths start (default: the current directory) and ``environ`` where ``from_env``
    looks (default: ``os.environ``)."""
    return load_plan_text(text, name=name, stem=stem, base_dir=base_dir, environ=environ).spec


def load_plan_text(
    text: str,
    *,
    name: str = "<pipeline>",
    stem: str = "pipeline",
    base_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> PipelinePlan:
    """Like :func:`load_pipeline_text`, with each step's rules."""
    if not isinstance(text, str):
        raise SpecError("pipeline", f"expected YAML text, not {type(text).__name__}")
    try:
        document = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        raise SpecError("pipeline", _yaml_problem(name, error)) from None
    except yaml.YAMLError as error:
        raise SpecError("pipeline", f"{name}: {_one_line(str(error))}") from None
    except RecursionError:
        raise SpecError("pipeline", f"{name}: nested too deeply") from None
    return plan_from_data(document, stem=stem, name=name, base_dir=base_dir, environ=environ)


def _yaml_problem(name: str, error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = error.problem or error.context or "invalid YAML"
    context = f" ({error.context})" if error.context and error.problem else ""
    return f"{name}: {where}{_one_line(problem + context)}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def pipeline_from_data(
    document: object,
    *,
    stem: str = "pipeline",
    name: str = "",
    base_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> BuildSpec:
    """Validate an already-decoded pipeline document (what ``yaml.safe_load`` returns)."""
    return plan_from_data(document, stem=stem, name=name, base_dir=base_dir, environ=environ).spec


def plan_from_data(
    document: object,
    *,
    stem: str = "pipeline",
    name: str = "",
    base_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> PipelinePlan:
    """Like :func:`pipeline_from_data`, with each step's rules. Secrets are read last,
    once the whole document is known to be valid: a mistake in the file is said before
    a variable missing from the environment it runs in."""
    source = f"{name}: " if name else ""
    if document is None:
        raise SpecError("pipeline", f"{source}empty; expected a mapping with a 'steps' list")
    if not isinstance(document, Mapping):
        raise SpecError(
            "pipeline",
            f"{source}expected a mapping with a 'steps' list, not {_kind(document)}",
        )
    _reject_unknown(document, TOP_LEVEL_KEYS, "pipeline")
    if "steps" not in document:
        raise SpecError("steps", "missing: a pipeline needs a list of steps")
    raw_steps = document["steps"]
    if not isinstance(raw_steps, list):
        raise SpecError("steps", f"must be a list of steps, not {_kind(raw_steps)}")
    if not raw_steps:
        raise SpecError("steps", "must hold at least one step")
    raw_services = document.get("services")
    if raw_services is None:
        raw_services = []
    elif not isinstance(raw_services, list):
        raise SpecError("services", f"must be a list of services, not {_kind(raw_services)}")
    workspace = _workspace(document.get("workspace"))
    volumes = _volumes(document.get("volumes"))
    allow_literal = _allow_literal(document.get("allow_literal_secrets"))
    secret_sources = _secret_sources(document.get("secrets"), allow_literal)
    registry_sources = _registry_sources(document.get("registries"), allow_literal)
    workspace_path = (workspace.path if workspace else None) or DEFAULT_WORKSPACE_PATH
    services = [
        _step(
            i,
            raw,
            where="services",
            volumes=volumes,
            workspace_path=workspace_path,
            secrets=secret_sources,
        )
        for i, raw in enumerate(raw_services)
    ]
    steps = [
        _step(i, raw, volumes=volumes, workspace_path=workspace_path, secrets=secret_sources)
        for i, raw in enumerate(raw_steps)
    ]
    # Services and steps are containers of one pod: one name each, across both lists.
    _reject_duplicates(services, steps)
    # Steps are valid one by one (and so are mappings) before rules that name others
    # are read: a depends_on can then say which names exist (services too: they have
    # started before any step, so depending on one holds at once).
    names = [step.name for step in steps]
    known = [*names, *(service.name for service in services)]
    rules = {service.name: StepRules() for service in services}
    rules.update({step.name: _rules(i, raw_steps[i], known) for i, step in enumerate(steps)})
    _reject_cycles(rules, names)

    build_id = document.get("build_id")
    if build_id is None:
        build_id = generate_build_id(stem)
    elif isinstance(build_id, int) and not isinstance(build_id, bool):
        build_id = str(build_id)
    elif not isinstance(build_id, str):
        raise SpecError("build_id", f"must be a string, not {_kind(build_id)}")

    kwargs: dict[str, Any] = {}
    for key in ("labels", "annotations", "node_selector"):
        if document.get(key) is not None:
            kwargs[key] = _str_map(document[key], key)
    for key in ("service_account", "pause_image"):
        value = document.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise SpecError(key, f"must be a string, not {_kind(value)}")
            kwargs[key] = value
    if workspace is not None:
        kwargs["workspace"] = workspace
    if volumes:
        kwargs["volumes"] = volumes
    pull_secrets = document.get("image_pull_secrets")
    if pull_secrets is not None:
        kwargs["image_pull_secrets"] = _secret_names(pull_secrets, "image_pull_secrets")
    for key in POLICY_KEYS:
        # Kubernetes' own structures, passed as written: BuildSpec checks their types,
        # the API server the rest (and refuses the pod with its own message).
        if document.get(key) is not None:
            kwargs[key] = document[key]
    base = Path.cwd() if base_dir is None else Path(base_dir)
    env = os.environ if environ is None else environ
    if secret_sources:
        kwargs["secrets"] = {
            name: SecretValue(_read_secret(source, base, env))
            for name, source in secret_sources.items()
        }
    if registry_sources:
        kwargs["registries"] = {
            host: RegistryCredentials(
                username=user if isinstance(user, str) else _read_secret(user, base, env),
                password=SecretValue(_read_secret(password, base, env)),
            )
            for host, (user, password) in registry_sources.items()
        }
    try:
        # Services come first in the pod as in the file: they start before the steps.
        spec = BuildSpec(build_id=build_id, steps=[*services, *steps], **kwargs)
    except SpecError as error:
        raise SpecError(_file_field(error.field), error.problem) from None
    return PipelinePlan(spec, rules, services=tuple(service.name for service in services))


def generate_build_id(stem: str) -> str:
    """``<stem as a DNS-1123 label>-<random hex>``, at most 63 characters."""
    base = re.sub(r"[^a-z0-9-]+", "-", stem.lower())
    base = re.sub(r"-{2,}", "-", base).strip("-")
    base = base[: _MAX_BUILD_ID - _SUFFIX_HEX - 1].strip("-") or "build"
    return f"{base}-{secrets.token_hex(_SUFFIX_HEX // 2)}"


def _step(
    index: int,
    raw: object,
    *,
    where: str = "steps",
    volumes: Mapping[str, Any] | None = None,
    workspace_path: str = DEFAULT_WORKSPACE_PATH,
    secrets: Collection[str] = (),
) -> StepSpec:
    """A step of ``steps`` or a service of ``services`` (``where``): the same keys,
    but a service is detached and has no rules. ``secrets``: the names the file's
    top-level ``secrets`` declares."""
    service = where == "services"
    where = f"{where}[{index}]"
    if not isinstance(raw, Mapping):
        raise SpecError(where, f"must be a mapping with name, image and commands, not {_kind(raw)}")
    if service:
        for key in RULE_KEYS:
            if key in raw:
                raise SpecError(
                    where,
                    f"a service has no {key!r}: services start before every step, in "
                    "file order (a step with detach: true starts at its turn)",
                )
    _reject_unknown(raw, SERVICE_KEYS if service else STEP_KEYS, where)
    for required in ("name", "image"):
        if raw.get(required) is None:
            raise SpecError(f"{where}.{required}", "missing")
    name = raw["name"]
    if not isinstance(name, str):
        raise SpecError(f"{where}.name", f"must be a string, not {_kind(name)}")
    image = raw["image"]
    if not isinstance(image, str):
        raise SpecError(f"{where}.image", f"must be a string, not {_kind(image)}")
    kwargs: dict[str, Any] = {"name": name, "image": image}

    commands = raw.get("commands")
    if commands is None:
        commands = []
    elif isinstance(commands, str):
        commands = [commands]
    elif not isinstance(commands, list):
        raise SpecError(
            f"{where}.commands", f"must be a list of shell lines, not {_kind(commands)}"
        )
    for i, line in enumerate(commands):
        if isinstance(line, Mapping):
            raise SpecError(
                f"{where}.commands[{i}]",
                "must be a string, but YAML read this line as a mapping "
                "(a ': ' in it): quote the whole line",
            )
        if not isinstance(line, str):
            raise SpecError(f"{where}.commands[{i}]", f"must be a string, not {_kind(line)}")
    kwargs["commands"] = list(commands)

    entrypoint = raw.get("entrypoint")
    if entrypoint is not None:
        if not isinstance(entrypoint, list):
            raise SpecError(
                f"{where}.entrypoint", f"must be a list of strings, not {_kind(entrypoint)}"
            )
        for i, arg in enumerate(entrypoint):
            if not isinstance(arg, str):
                raise SpecError(f"{where}.entrypoint[{i}]", f"must be a string, not {_kind(arg)}")
        kwargs["entrypoint"] = list(entrypoint)

    env_key = _env_key(raw, where, name)
    env_secrets: dict[str, str] = {}
    if env_key is not None:
        env, env_secrets = _environment(raw[env_key], f"{where}.{env_key}", secrets)
        kwargs["env"] = env
    step_secrets: dict[str, str | ExistingSecret] = {}
    if raw.get("secrets") is not None:
        step_secrets = _step_secrets(
            raw["secrets"], f"{where}.secrets", secrets, kwargs.get("env", {}), env_key
        )
    for variable, secret in env_secrets.items():
        if variable in step_secrets:
            raise SpecError(
                f"{where}.{env_key}[{variable!r}]",
                f"{variable} is also given under secrets: give it once",
            )
        step_secrets[variable] = secret
    if step_secrets:
        kwargs["secrets"] = step_secrets

    security_context = raw.get("security_context")
    if security_context is not None:
        if not isinstance(security_context, Mapping):
            raise SpecError(
                f"{where}.security_context",
                f"must be a mapping (the container's securityContext), not "
                f"{_kind(security_context)}",
            )
        kwargs["security_context"] = dict(security_context)
    privileged = raw.get("privileged")
    if privileged is not None:
        if not isinstance(privileged, bool):
            raise SpecError(
                f"{where}.privileged", f"must be true or false, not {_kind(privileged)}"
            )
        kwargs["privileged"] = privileged

    working_dir = raw.get("working_dir")
    if working_dir is not None:
        if not isinstance(working_dir, str):
            raise SpecError(f"{where}.working_dir", f"must be a string, not {_kind(working_dir)}")
        kwargs["working_dir"] = working_dir

    pull_policy = raw.get("pull_policy")
    if pull_policy is not None:
        if not isinstance(pull_policy, str) or pull_policy not in PULL_POLICIES:
            raise SpecError(
                f"{where}.pull_policy",
                f"{pull_policy!r} is not one of {', '.join(PULL_POLICIES)}",
            )
        kwargs["pull_policy"] = pull_policy

    timeout = raw.get("timeout")
    if timeout is not None:
        kwargs["timeout"] = _seconds(timeout, f"{where}.timeout")

    resources = raw.get("resources")
    if resources is not None:
        kwargs["resources"] = _resources(resources, f"{where}.resources")

    detach = raw.get("detach")
    if detach is not None and not isinstance(detach, bool):
        raise SpecError(f"{where}.detach", f"must be true or false, not {_kind(detach)}")
    if service and detach is False:
        raise SpecError(f"{where}.detach", "a service is always detached")
    kwargs["detach"] = service or bool(detach)

    ports = raw.get("ports")
    if ports is not None:
        kwargs["ports"] = _ports(ports, f"{where}.ports")

    mounts = raw.get("volumes")
    if mounts is not None:
        kwargs["mounts"] = _mounts(mounts, f"{where}.volumes", volumes or {}, workspace_path)

    try:
        return StepSpec(**kwargs)
    except SpecError as error:
        raise _relocate(error, where, name) from None


def _reject_duplicates(services: Sequence[StepSpec], steps: Sequence[StepSpec]) -> None:
    seen: dict[str, str] = {}
    for where, listed in (("services", services), ("steps", steps)):
        for i, step in enumerate(listed):
            if step.name in seen:
                why = (
                    " (services and steps are containers of one pod: each needs a name of its own)"
                    if services
                    else ""
                )
                raise SpecError(
                    f"{where}[{i}].name",
                    f"duplicate step name {step.name!r}, already that of {seen[step.name]}{why}",
                )
            seen[step.name] = f"{where}[{i}]"


def _ports(value: object, field: str) -> list[int]:
    """TCP ports, as numbers, as digit strings, or as Woodpecker's ``"5432/tcp"``."""
    listed = [value] if isinstance(value, int | str) and not isinstance(value, bool) else value
    if not isinstance(listed, list):
        raise SpecError(field, f"must be a list of TCP port numbers, not {_kind(value)}")
    out: list[int] = []
    for i, port in enumerate(listed):
        number: object = port
        if isinstance(port, str):
            text = port.strip().lower().removesuffix("/tcp")
            number = int(text) if text.isascii() and text.isdigit() else port
        if isinstance(number, bool) or not isinstance(number, int) or not 0 < number < 65536:
            raise SpecError(f"{field}[{i}]", f"{port!r} is not a TCP port number (1-65535)")
        out.append(number)
    return out


def _mounts(
    value: object, field: str, volumes: Mapping[str, Any], workspace_path: str
) -> dict[str, str]:
    """A step's ``volumes``, Woodpecker's ``"name:/path"`` strings, as StepSpec mounts."""
    if not isinstance(value, list):
        raise SpecError(field, f'must be a list of "name:/path" strings, not {_kind(value)}')
    mounts: dict[str, str] = {}
    paths: dict[str, str] = {}
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(item, str):
            raise SpecError(where, f'must be a "name:/path" string, not {_kind(item)}')
        name, colon, path = item.partition(":")
        if name.startswith("/"):
            # Docker's host:container form: a host path is a volume of its own here.
            raise SpecError(
                where,
                f"{item!r} mounts a host path: declare it under volumes "
                "({name: {hostPath: {path: ...}}}) and mount it by name",
            )
        if not colon or not name or not path.startswith("/") or ":" in path:
            raise SpecError(where, f'{item!r} is not "name:/path" (an absolute path)')
        if name not in volumes:
            known = ", ".join(sorted(volumes)) or "none declared"
            raise SpecError(where, f"no volume {name!r} under volumes ({known})")
        normal = posixpath.normpath(path)
        if normal == posixpath.normpath(workspace_path):
            raise SpecError(where, f"{normal} is the workspace's path")
        if name in mounts:
            raise SpecError(where, f"volume {name!r} is mounted twice")
        if normal in paths:
            raise SpecError(where, f"{paths[normal]!r} is already mounted at {normal}")
        mounts[name] = path
        paths[normal] = name
    return mounts


@dataclass(frozen=True, repr=False)
class _Source:
    """Where a secret's value comes from, as the file says: read once the whole file is
    known to be valid."""

    kind: Literal["from_env", "from_file", "value"]
    detail: str
    """The variable's name, the file's path, or (``value``) the value itself."""
    field: str
    """Where the file says it (``secrets.deploy_token``), for errors."""

    def __repr__(self) -> str:
        # A literal value is a secret like any other: never in a repr.
        shown = "********" if self.kind == "value" else repr(self.detail)
        return f"_Source({self.kind}={shown}, field={self.field!r})"


_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
"""A secret's name: it becomes a key of the build's Secret (Kubernetes' rule for one)."""
"""The name of a Secret in the namespace (a DNS-1123 subdomain)."""
_FORMS = "{from_env: VAR} or {from_file: path}"


def _allow_literal(value: object) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise SpecError("allow_literal_secrets", f"must be true or false, not {_kind(value)}")
    return value


def _source(value: object, field: str, *, allow_literal: bool) -> _Source:
    """A secret's ``{from_env: VAR}``, ``{from_file: path}`` or ``{value: ...}``. No
    message repeats what was written in place of one: it may be the secret itself."""
    if value is None:
        raise SpecError(field, f"missing: give {_FORMS}")
    if not isinstance(value, Mapping):
        insist = (
            " ({value: ...} if it must be written here)"
            if allow_literal
            else " ({value: ...} with allow_literal_secrets: true, if it must be written here)"
        )
        raise SpecError(
            field,
            f"is {_kind(value)} written in the pipeline file, where anyone who reads the "
            f"file reads it: give {_FORMS} instead{insist}",
        )
    _reject_unknown(value, SECRET_SOURCES, field)
    if len(value) != 1:
        raise SpecError(field, f"must hold exactly one of {', '.join(SECRET_SOURCES)}")
    ((kind, detail),) = value.items()
    where = f"{field}.{kind}"
    if kind == "value":
        if not allow_literal:
            raise SpecError(
                where,
                "a secret written in the pipeline file is read by anyone who reads the "
                f"file: give {_FORMS}, or set allow_literal_secrets: true at the top level "
                "to insist",
            )
        if not isinstance(detail, str) or not detail:
            # YAML reads 0123 as a number (83, in YAML 1.1): only a quoted string is
            # surely the value that was meant.
            raise SpecError(where, f"must be a non-empty quoted string, not {_kind(detail)}")
        return _Source("value", detail, field)
    if not isinstance(detail, str) or not detail:
        what = "a variable's name" if kind == "from_env" else "a path"
        raise SpecError(where, f"must be {what}, not {_kind(detail)}")
    if kind == "from_env":
        if "=" in detail or "\0" in detail:
            raise SpecError(where, f"{detail!r} is not an environment variable's name")
        return _Source("from_env", detail, field)
    return _Source("from_file", detail, field)


def _secret_sources(value: object, allow_literal: bool) -> dict[str, _Source]:
    """The top-level ``secrets``: name to where its value comes from."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(
            "secrets",
            f"must be a mapping of name to {_FORMS}, such as "
            f"{{deploy_token: {{from_env: DEPLOY_TOKEN}}}}, not {_kind(value)}",
        )
    out: dict[str, _Source] = {}
    for name, source in value.items():
        if not isinstance(name, str) or not _SECRET_KEY.match(name):
            raise SpecError(
                "secrets",
                f"{name!r} is not a secret name (letters, digits, '-', '_' and '.')",
            )
        out[name] = _source(source, f"secrets.{name}", allow_literal=allow_literal)
    return out


def _registry_sources(
    value: object, allow_literal: bool
) -> dict[str, tuple[str | _Source, _Source]]:
    """``registries``: host to its user name (a string, or read like a secret) and its
    password (a secret's source)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(
            "registries",
            "must be a mapping of registry host to {username, password}, not " + _kind(value),
        )
    out: dict[str, tuple[str | _Source, _Source]] = {}
    for host, credentials in value.items():
        where = f"registries.{host}"
        if not isinstance(host, str):
            raise SpecError("registries", f"hosts must be strings, not {_kind(host)} ({host!r})")
        if not isinstance(credentials, Mapping):
            raise SpecError(
                where, f"must be a mapping with username and password, not {_kind(credentials)}"
            )
        _reject_unknown(credentials, REGISTRY_KEYS, where)
        username = credentials.get("username")
        user: str | _Source
        if isinstance(username, str) and username:
            user = username  # a user name is no secret: it may be written as is
        elif isinstance(username, Mapping):
            user = _source(username, f"{where}.username", allow_literal=True)
        else:
            raise SpecError(
                f"{where}.username",
                f"must be a user name, or {_FORMS}, not {_kind(username)}",
            )
        password = _source(
            credentials.get("password"), f"{where}.password", allow_literal=allow_literal
        )
        out[host] = (user, password)
    return out


def _read_secret(source: _Source, base: Path, environ: Mapping[str, str]) -> str:
    """The value ``source`` names. Errors name the secret and the variable or file,
    never what was read."""
    if source.kind == "value":
        return source.detail
    where = f"{source.field}.{source.kind}"
    if source.kind == "from_env":
        value = environ.get(source.detail)
        if value is None:
            raise SpecError(where, f"the environment variable {source.detail} is not set")
        if not value:
            # Unset in CI is often "set to nothing": a build would run without its secret.
            raise SpecError(where, f"the environment variable {source.detail} is empty")
        return value
    written = Path(source.detail).expanduser()
    path = written if written.is_absolute() else base / written
    shown = source.detail if written.is_absolute() else f"{source.detail} ({path})"
    try:
        with path.open("rb") as file:
            data = file.read(MAX_SECRET_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(where, f"{shown}: no such file") from None
    except IsADirectoryError:
        raise SpecError(where, f"{shown}: is a directory, not a file") from None
    except OSError as error:
        raise SpecError(where, f"{shown}: cannot read: {error.strerror or error}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise SpecError(where, f"{shown}: larger than 1 MiB, the most a Kubernetes Secret holds")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SpecError(where, f"{shown}: not UTF-8 text (byte {error.start})") from None
    # The newline an editor or `echo > file` ends the file with is not part of the
    # value; a second one, or other whitespace, was put there on purpose.
    text = text.removesuffix("\n")
    text = text.removesuffix("\r") if data.endswith(b"\r\n") else text
    if not text:
        raise SpecError(where, f"{shown}: is empty")
    return text


def _from_secret(value: Mapping[Any, Any], field: str, declared: Collection[str]) -> str:
    """An environment value ``{from_secret: NAME}``: the name of a declared secret."""
    _reject_unknown(value, ("from_secret",), field)
    name = value["from_secret"]
    if not isinstance(name, str):
        raise SpecError(f"{field}.from_secret", f"must be a secret's name, not {_kind(name)}")
    _require_declared(name, field, declared)
    return name


def _require_declared(name: str, field: str, declared: Collection[str]) -> None:
    if name in declared:
        return
    known = ", ".join(sorted(declared)) or "none declared"
    close = difflib.get_close_matches(name, list(declared), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise SpecError(field, f"no secret {name!r} under the top-level secrets ({known}){hint}")


def _environment(
    value: object, field: str, declared: Collection[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """A step's ``environment``: its plain variables, and those given
    ``{from_secret: NAME}`` (Drone's and Woodpecker's spelling) as variable to secret."""
    if not isinstance(value, Mapping):
        return _str_map(value, field), {}
    plain: dict[Any, Any] = {}
    from_secrets: dict[str, str] = {}
    for key, item in value.items():
        if isinstance(item, Mapping) and "from_secret" in item:
            if not isinstance(key, str):
                raise SpecError(field, f"keys must be strings, not {_kind(key)} ({key!r})")
            from_secrets[key] = _from_secret(item, f"{field}[{key!r}]", declared)
        else:
            plain[key] = item
    return _str_map(plain, field), from_secrets


def _step_secrets(
    value: object,
    field: str,
    declared: Collection[str],
    env: Collection[str],
    env_key: str | None,
) -> dict[str, str | ExistingSecret]:
    """A step's ``secrets``, Woodpecker's list: ``NAME`` (the variable ``NAME``),
    ``{source: NAME, target: VAR}``, or ``{secret: SECRET, key: KEY, target: VAR}`` for
    a key of a Secret already in the namespace."""
    if not isinstance(value, list):
        raise SpecError(
            field,
            "must be a list of secret names, {source: NAME, target: VAR} or "
            f"{{secret: SECRET, key: KEY, target: VAR}}, not {_kind(value)}",
        )
    out: dict[str, str | ExistingSecret] = {}
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        source: str | ExistingSecret
        if isinstance(item, str):
            _require_declared(item, where, declared)
            source, target = item, item
        elif isinstance(item, Mapping) and ("secret" in item or "key" in item):
            _reject_unknown(item, EXISTING_SECRET_KEYS, where)
            for key in EXISTING_SECRET_KEYS:
                if not isinstance(item.get(key), str) or not item[key]:
                    raise SpecError(
                        f"{where}.{key}", f"must be a string, not {_kind(item.get(key))}"
                    )
            if not DNS1123_SUBDOMAIN.match(item["secret"]):
                raise SpecError(f"{where}.secret", f"{item['secret']!r} is not a Secret's name")
            if not _SECRET_KEY.match(item["key"]):
                raise SpecError(f"{where}.key", f"{item['key']!r} is not a key of a Secret")
            source, target = ExistingSecret(item["secret"], item["key"]), item["target"]
        elif isinstance(item, Mapping):
            _reject_unknown(item, STEP_SECRET_KEYS, where)
            name = item.get("source")
            if not isinstance(name, str):
                raise SpecError(f"{where}.source", f"must be a secret's name, not {_kind(name)}")
            if "/" in name and name not in declared:
                # Someone else's spelling of "a key of that Secret": say ours.
                raise SpecError(
                    f"{where}.source",
                    f"{name!r} is no secret of the file; a key of an existing Secret is "
                    "{secret: SECRET, key: KEY, target: VAR}",
                )
            _require_declared(name, f"{where}.source", declared)
            target = item.get("target", name)
            if not isinstance(target, str):
                raise SpecError(
                    f"{where}.target", f"must be an environment variable, not {_kind(target)}"
                )
            source = name
        else:
            raise SpecError(
                where, f"must be a secret's name or a mapping with a target, not {_kind(item)}"
            )
        if target in out:
            raise SpecError(where, f"{target} is given twice")
        if target in env:
            raise SpecError(where, f"{target} is also set under {env_key}: give it once")
        out[target] = source
    return out


def _secret_names(value: object, field: str) -> list[str]:
    """``image_pull_secrets``: names of Secrets in the namespace."""
    if not isinstance(value, list):
        raise SpecError(field, f"must be a list of Secret names, not {_kind(value)}")
    for i, name in enumerate(value):
        if not isinstance(name, str):
            raise SpecError(f"{field}[{i}]", f"must be a Secret's name, not {_kind(name)}")
        if not DNS1123_SUBDOMAIN.match(name):
            raise SpecError(f"{field}[{i}]", f"{name!r} is not a Secret's name")
    return list(value)


def _workspace(value: object) -> Workspace | None:
    """``workspace``: a path, or a mapping of :class:`Workspace`'s fields."""
    if value is None:
        return None
    if isinstance(value, str):
        return Workspace(path=value)
    if not isinstance(value, Mapping):
        raise SpecError(
            "workspace",
            f"must be a path or a mapping with {', '.join(WORKSPACE_KEYS)}, not {_kind(value)}",
        )
    _reject_unknown(value, WORKSPACE_KEYS, "workspace")
    kwargs: dict[str, Any] = {}
    for key in ("path", "claim"):
        item = value.get(key)
        if item is not None:
            if not isinstance(item, str):
                raise SpecError(f"workspace.{key}", f"must be a string, not {_kind(item)}")
            kwargs[key] = item
    size = value.get("size_limit")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, str | int):
            raise SpecError(
                "workspace.size_limit", f"must be a quantity such as 2Gi, not {_kind(size)}"
            )
        kwargs["size_limit"] = str(size)
    medium = value.get("medium")
    if medium is not None:
        # Drone writes `medium: memory`; Kubernetes, `Memory`.
        if not isinstance(medium, str) or medium.lower() != "memory":
            raise SpecError("workspace.medium", f"{medium!r} is not Memory")
        kwargs["medium"] = "Memory"
    return Workspace(**kwargs)


_VOLUME_REQUIRED = {
    "configMap": "name",
    "secret": "secretName",
    "persistentVolumeClaim": "claimName",
    "hostPath": "path",
}
"""The field each volume source cannot do without: missing, the pod would only be
refused by the API server, or fail at mount time."""


def _volumes(value: object) -> dict[str, dict[str, Any]]:
    """``volumes``: a mapping of name to one Kubernetes volume source."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(
            "volumes",
            "must be a mapping of name to volume source, such as {cache: {emptyDir: {}}}, "
            f"not {_kind(value)}",
        )
    out: dict[str, dict[str, Any]] = {}
    for name, source in value.items():
        where = f"volumes.{name}"
        if not isinstance(name, str):
            raise SpecError("volumes", f"names must be strings, not {_kind(name)} ({name!r})")
        if not isinstance(source, Mapping):
            raise SpecError(
                where,
                f"must be a mapping with one of {', '.join(VOLUME_KINDS)}, not {_kind(source)}",
            )
        if len(source) != 1:
            raise SpecError(where, f"must hold exactly one of {', '.join(VOLUME_KINDS)}")
        ((kind, detail),) = source.items()
        if kind not in VOLUME_KINDS:
            close = difflib.get_close_matches(str(kind), VOLUME_KINDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpecError(where, f"{kind!r} is not one of {', '.join(VOLUME_KINDS)}{hint}")
        if detail is None and kind == "emptyDir":
            detail = {}  # `emptyDir:` with nothing after it
        if not isinstance(detail, Mapping):
            raise SpecError(f"{where}.{kind}", f"must be a mapping, not {_kind(detail)}")
        required = _VOLUME_REQUIRED.get(kind)
        if required is not None and not isinstance(detail.get(required), str):
            raise SpecError(f"{where}.{kind}", f"needs {required} (a string)")
        out[name] = {kind: dict(detail)}
    try:
        # The spec's own checks (names, the workspace's reserved name), in file terms.
        check_volumes(out)
    except SpecError as error:
        raise SpecError(_file_field(error.field), error.problem) from None
    return out


def _file_field(field: str) -> str:
    """``volumes['cache']`` (the spec's spelling) as ``volumes.cache`` (the file's);
    the same for ``secrets`` and ``registries``."""
    match = re.fullmatch(r"(volumes|secrets|registries)\[(['\"])(.*)\2\](.*)", field)
    return f"{match.group(1)}.{match.group(3)}{match.group(4)}" if match else field


def _env_key(raw: Mapping[Any, Any], where: str, name: str) -> str | None:
    """Which of ``environment`` and its alias ``env`` holds the step's variables."""
    given = [key for key in ("environment", "env") if raw.get(key) is not None]
    if len(given) > 1:
        # Merging the two would hide a copy-paste mistake; which wins is anyone's guess.
        raise SpecError(
            where,
            f"step {name!r} has both 'environment' and 'env' (env is an alias of "
            "environment): keep one",
        )
    return given[0] if given else None


def _rules(index: int, raw: Mapping[Any, Any], names: Sequence[str]) -> StepRules:
    where = f"steps[{index}]"
    return StepRules(
        failure=_failure_policy(raw.get("failure"), f"{where}.failure"),
        when_status=_when_status(raw.get("when"), f"{where}.when"),
        depends_on=_depends_on(raw.get("depends_on"), f"{where}.depends_on", names[index], names),
    )


def _failure_policy(value: object, field: str) -> Literal["fail", "ignore"]:
    if value is None or value == "fail":
        return "fail"
    if value == "ignore":
        return "ignore"
    raise SpecError(field, f"{value!r} is not one of {', '.join(FAILURE_POLICIES)}")


def _when_status(value: object, field: str) -> frozenset[Status]:
    if value is None:
        return frozenset({"success"})
    if not isinstance(value, Mapping):
        raise SpecError(
            field, f"must be a mapping such as {{status: [success, failure]}}, not {_kind(value)}"
        )
    _reject_unknown(value, WHEN_KEYS, field)
    status = value.get("status")
    if status is None:
        return frozenset({"success"})
    listed = [status] if isinstance(status, str) else status
    if listed == []:
        raise SpecError(f"{field}.status", f"must name at least one of {', '.join(STATUSES)}")
    if not isinstance(listed, list):
        raise SpecError(
            f"{field}.status", f"must be success, failure or a list of them, not {_kind(status)}"
        )
    out: set[Status] = set()
    for item in listed:
        if item == "success":
            out.add("success")
        elif item == "failure":
            out.add("failure")
        else:
            raise SpecError(f"{field}.status", f"{item!r} is not one of {', '.join(STATUSES)}")
    return frozenset(out)


def _depends_on(
    value: object, field: str, name: str, names: Sequence[str]
) -> tuple[str, ...] | None:
    if value is None:
        return None
    listed = [value] if isinstance(value, str) else value
    if not isinstance(listed, list):
        raise SpecError(field, f"must be a list of step names, not {_kind(value)}")
    out: list[str] = []
    for item in listed:
        if not isinstance(item, str):
            raise SpecError(field, f"step names must be strings, not {_kind(item)}")
        if item == name:
            raise SpecError(field, f"step {name!r} depends on itself")
        if item not in names:
            close = difflib.get_close_matches(item, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpecError(field, f"step {name!r} depends on {item!r}, which is no step{hint}")
        if item not in out:
            out.append(item)
    return tuple(out)


def _reject_cycles(rules: Mapping[str, StepRules], names: Sequence[str]) -> None:
    """A cycle would leave its steps waiting for each other forever: name it."""
    done: set[str] = set()
    for start in names:
        path: list[str] = []
        cycle = _find_cycle(start, rules, path, done)
        if cycle:
            raise SpecError("steps", f"depends_on forms a cycle: {' -> '.join(cycle)}")


def _find_cycle(
    step: str, rules: Mapping[str, StepRules], path: list[str], done: set[str]
) -> list[str] | None:
    """Depth-first from ``step``; the cycle through ``path`` if one is reachable."""
    if step in path:
        return [*path[path.index(step) :], step]
    if step in done:
        return None
    path.append(step)
    for needed in rules[step].depends_on or ():
        cycle = _find_cycle(needed, rules, path, done)
        if cycle:
            return cycle
    path.pop()
    done.add(step)
    return None


def _relocate(error: SpecError, where: str, name: str) -> SpecError:
    """A StepSpec error names the step by name (``steps[greet].image``) or not at all
    (``name``); a pipeline file's reader wants its position (``steps[0].image``)."""
    field = error.field
    by_name = f"steps[{name}]"
    if field.startswith(by_name):
        field = where + field[len(by_name) :]
    elif not field.startswith("steps["):
        field = f"{where}.{field}"
    return SpecError(field, error.problem)


def _seconds(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(field, f"must be a number of seconds, not {_kind(value)}")
    try:
        seconds = float(value)
    except OverflowError:
        raise SpecError(field, "is too large") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise SpecError(field, f"must be a positive number of seconds, not {value!r}")
    return seconds


def _resources(value: object, field: str) -> dict[str, dict[str, str]]:
    if not isinstance(value, Mapping):
        raise SpecError(
            field, f"must be a mapping with 'requests' and/or 'limits', not {_kind(value)}"
        )
    out: dict[str, dict[str, str]] = {}
    for key, amounts in value.items():
        if key not in ("requests", "limits"):
            raise SpecError(f"{field}", f"unknown key {key!r}: expected 'requests' or 'limits'")
        where = f"{field}.{key}"
        if not isinstance(amounts, Mapping):
            raise SpecError(
                where, f"must be a mapping of resource name to quantity, not {_kind(amounts)}"
            )
        checked: dict[str, str] = {}
        for resource, quantity in amounts.items():
            if not isinstance(resource, str):
                raise SpecError(where, f"resource names must be strings, not {_kind(resource)}")
            if isinstance(quantity, bool) or not isinstance(quantity, str | int | float):
                raise SpecError(
                    f"{where}.{resource}",
                    f"must be a quantity such as '64Mi', not {_kind(quantity)}",
                )
            checked[resource] = quantity if isinstance(quantity, str) else str(quantity)
        out[key] = checked
    return out


def _str_map(value: object, field: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise SpecError(field, f"must be a mapping of string to string, not {_kind(value)}")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise SpecError(field, f"keys must be strings, not {_kind(key)} ({key!r})")
        if isinstance(item, bool):
            out[key] = "true" if item else "false"
        elif isinstance(item, int | float):
            out[key] = str(item)
        elif isinstance(item, str):
            out[key] = item
        else:
            raise SpecError(f"{field}[{key!r}]", f"must be a string, not {_kind(item)}")
    return out


def _reject_unknown(mapping: Mapping[Any, Any], known: tuple[str, ...], where: str) -> None:
    for key in mapping:
        if key in known:
            continue
        hint = ""
        if isinstance(key, str):
            close = difflib.get_close_matches(key, known, n=1)
            if close:
                hint = f" (did you mean {close[0]!r}?)"
        raise SpecError(where, f"unknown key {key!r}{hint}")


def _kind(value: object) -> str:
    """A YAML author's name for the type of ``value``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__
