"""A build's secrets: values that live only in memory and in one Kubernetes Secret, and
are masked wherever the library shows text.

A build declares its secret values (``BuildSpec(secrets={"DEPLOY_TOKEN": "..."})``); each
step names the ones it gets as environment variables (``StepSpec(secrets=["DEPLOY_TOKEN"])``,
or ``{"TOKEN": "DEPLOY_TOKEN"}`` to rename, or ``{"DB_PASS": ExistingSecret("db", "password")}``
for a Secret already in the namespace). The pod references them with ``secretKeyRef``: no
value is ever in the pod spec. The runtime creates the build's Secret before the pod and
then makes the pod its owner, so Kubernetes' garbage collector removes it with the pod
even when no worker is left to do so.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from buildruntime.cluster.port import JSON
from buildruntime.errors import BuildRuntimeError, SpecError
from buildruntime.labels import BUILD_ID, MANAGED_BY, MANAGED_BY_VALUE
from buildruntime.names import DNS1123_SUBDOMAIN

MASK = b"********"
MIN_MASKED = 4
"""Values (or lines of a multi-line value) shorter than this are not masked: masking
"1" or "ab" would blank out unrelated text everywhere and tell a reader that the secret
is that short. Use secrets of at least this many characters."""

_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


class SecretValue:
    """A secret's value: shown as ``SecretValue('********')`` by ``repr`` and ``str``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("a secret value must be a string")
        self._value = value

    def reveal(self) -> str:
        """The value itself, for the Secret the runtime creates and for masking."""
        return self._value

    def __repr__(self) -> str:
        return "SecretValue('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretValue) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ExistingSecret:
    """A key of a Secret that already exists in the build's namespace."""

    name: str
    key: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not DNS1123_SUBDOMAIN.match(self.name):
            raise SpecError("secret.name", f"{self.name!r} is not a Secret name")
        if not isinstance(self.key, str) or not _KEY.match(self.key):
            raise SpecError("secret.key", f"{self.key!r} is not a Secret key")


def check_build_secrets(value: object) -> dict[str, SecretValue]:
    """The build's secrets: name (a Secret key) to value."""
    if not isinstance(value, Mapping):
        raise SpecError("secrets", "must be a mapping of name to value")
    checked: dict[str, SecretValue] = {}
    for name, secret in value.items():
        if not isinstance(name, str) or not _KEY.match(name):
            raise SpecError(f"secrets[{name!r}]", "names are letters, digits, '-', '_' and '.'")
        if isinstance(secret, str):
            secret = SecretValue(secret)
        if not isinstance(secret, SecretValue):
            # The value is not quoted: it may be a secret of the wrong type.
            raise SpecError(f"secrets[{name!r}]", f"must be a string, not {type(secret).__name__}")
        checked[name] = secret
    return checked


def check_step_secrets(value: object, where: str) -> dict[str, str | ExistingSecret]:
    """A step's secrets: environment variable to a build secret's name or an existing
    Secret's key; a list of names gives each under its own name."""
    field = f"{where}.secrets"
    if isinstance(value, str | bytes):
        raise SpecError(field, "must be a list of secret names or a mapping")
    if not isinstance(value, Mapping):
        if not isinstance(value, Iterable):
            raise SpecError(field, "must be a list of secret names or a mapping")
        value = {name: name for name in value}
    checked: dict[str, str | ExistingSecret] = {}
    for env, source in value.items():
        if not isinstance(env, str) or not re.match(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", env):
            raise SpecError(f"{field}[{env!r}]", "is not a valid environment variable name")
        if not isinstance(source, str | ExistingSecret):
            raise SpecError(f"{field}[{env!r}]", "must name a build secret or be an ExistingSecret")
        checked[env] = source
    return checked


@dataclass(frozen=True)
class RegistryCredentials:
    """A user name and password (or token) for one registry; the password is shown by
    nothing of ours and masked like a secret."""

    username: str
    password: SecretValue | str

    def __post_init__(self) -> None:
        if not isinstance(self.username, str) or not self.username:
            raise SpecError("registries.username", "must be a non-empty string")
        if isinstance(self.password, str):
            object.__setattr__(self, "password", SecretValue(self.password))
        if not isinstance(self.password, SecretValue):
            raise SpecError("registries.password", "must be a string")

    @property
    def secret(self) -> SecretValue:
        assert isinstance(self.password, SecretValue)
        return self.password


def check_registries(value: object) -> dict[str, RegistryCredentials]:
    """Credentials by registry host (``registry.example.com``, ``localhost:5000``)."""
    if not isinstance(value, Mapping):
        raise SpecError("registries", "must be a mapping of registry host to credentials")
    checked: dict[str, RegistryCredentials] = {}
    for host, credentials in value.items():
        if not isinstance(host, str) or not re.match(r"^[A-Za-z0-9.-]+(:[0-9]+)?$", host):
            raise SpecError(f"registries[{host!r}]", "must be a registry host[:port]")
        if not isinstance(credentials, RegistryCredentials):
            raise SpecError(f"registries[{host!r}]", "must be RegistryCredentials")
        checked[host] = credentials
    return checked


def pull_secret_name(pod_name: str) -> str:
    """The build's own image pull Secret, named after its pod."""
    return f"{pod_name}-registries"


def render_pull_secret(
    pod_name: str, namespace: str, build_id: str, registries: Mapping[str, RegistryCredentials]
) -> JSON:
    """A ``kubernetes.io/dockerconfigjson`` Secret the kubelet pulls the build's images with."""
    auths = {
        host: {
            "username": cred.username,
            "password": cred.secret.reveal(),
            "auth": base64.b64encode(f"{cred.username}:{cred.secret.reveal()}".encode()).decode(),
        }
        for host, cred in registries.items()
    }
    config = json.dumps({"auths": auths}).encode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/dockerconfigjson",
        "metadata": {
            "name": pull_secret_name(pod_name),
            "namespace": namespace,
            "labels": {MANAGED_BY: MANAGED_BY_VALUE, BUILD_ID: build_id},
        },
        "data": {".dockerconfigjson": base64.b64encode(config).decode()},
    }


def secret_name(pod_name: str) -> str:
    """The build's own Secret, named after its pod."""
    return f"{pod_name}-secrets"


def render_secret(
    pod_name: str, namespace: str, build_id: str, values: Mapping[str, SecretValue]
) -> JSON:
    """The build's Secret (its values base64-encoded, as the API takes them)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": secret_name(pod_name),
            "namespace": namespace,
            "labels": {MANAGED_BY: MANAGED_BY_VALUE, BUILD_ID: build_id},
        },
        "data": {
            key: base64.b64encode(value.reveal().encode()).decode() for key, value in values.items()
        },
    }


def owned_by_pod(pod_name: str, pod_uid: str) -> JSON:
    """A patch making the pod the owner of the build's Secret (garbage-collected with it)."""
    return {
        "metadata": {
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": pod_uid}
            ]
        }
    }


class Masker:
    """Replaces every secret value (each line of a multi-line one) with ``********``.

    One compiled alternation of the values (longest first, so a value that contains
    another is masked whole) scans text once, at about a gigabyte a second, whatever
    the number of secrets.
    """

    __slots__ = ("_bytes", "_text")

    def __init__(self, values: Iterable[SecretValue]) -> None:
        needles: set[str] = set()
        for value in values:
            for line in value.reveal().splitlines():
                if len(line) >= MIN_MASKED:
                    needles.add(line)
        ordered = sorted(needles, key=len, reverse=True)
        self._text = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self._bytes = (
            re.compile(b"|".join(re.escape(n.encode()) for n in ordered)) if ordered else None
        )

    def __bool__(self) -> bool:
        return self._bytes is not None

    def lines(self, lines: list[bytes]) -> list[bytes]:
        """A batch of log lines, masked: scanned as one joined block, rewritten only
        when it holds a value."""
        pattern = self._bytes
        if pattern is None or not lines:
            return lines
        joined = b"\n".join(lines)
        if pattern.search(joined) is None:
            return lines
        # Values hold no newline (each line of a multi-line value is its own
        # alternative), so the rewritten block splits back into as many lines.
        return pattern.sub(MASK, joined).split(b"\n")

    def text(self, text: str) -> str:
        return text if self._text is None else self._text.sub(MASK.decode(), text)

    def error(self, error: BuildRuntimeError) -> BuildRuntimeError:
        """``error`` with every secret masked in what it says (changed in place)."""
        if self:
            error.summary = self.text(error.summary)
            if error.message is not None:
                error.message = self.text(error.message)
            error.args = (self.text(str(error)),)
        return error
