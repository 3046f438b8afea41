"""A container's environment and command line as the kubelet and the container runtime
make them.

The kubelet (``pkg/kubelet/kubelet_pods.go``, ``third_party/forked/golang/expansion``):
``env`` entries in order (``value``, or ``valueFrom.fieldRef`` for the pod's own
fields), each value expanded with the entries defined before it; then ``command`` and
``args`` expanded with the container's env. ``$(VAR)`` is replaced when VAR is defined
there and left as written otherwise (the variables the runtime adds, PATH, HOSTNAME and
HOME, are not the kubelet's to expand); ``$$`` is a literal ``$`` (so a script's ``$$``
reaches the shell as ``$``).

The runtime (containerd, runc): the process gets only the environment below, nothing of
the host's (no credentials, no ``VIRTUAL_ENV``), in this order, a later name replacing an
earlier one:

- ``PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin``, containerd's
  default for an image that sets none (the simulated steps use the host's ``/bin/sh``
  and coreutils from those directories);
- ``HOSTNAME=<pod name>``;
- ``HOME``: the simulated ``/root`` (see :mod:`.rootfs`), as runc sets it for uid 0;
- the container's ``env``.

The command line is the runtime's merge of the container's ``command``/``args`` with
the image's ``ENTRYPOINT``/``CMD`` (see :func:`command_line`). The service-link variables
a real kubelet adds (``KUBERNETES_SERVICE_HOST``...) are left out: nothing would answer
at those addresses, and they would make a step believe it runs in a cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from buildruntime.testing.imagestore import ImageConfig
from buildruntime.testing.objects import JSON

CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of command, args and env values: a defined
    variable is replaced, an undefined reference is left as written, ``$$`` is ``$``."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            following = text[cursor + 1]
            advance = 1
            if following == "$":
                out.append("$")
            elif following == "(":
                closing = text.find(")", cursor + 2)
                if closing == -1:
                    out.append("$(")
                else:
                    name = text[cursor + 2 : closing]
                    out.append(env.get(name, f"$({name})"))
                    advance = closing - cursor
            else:
                out.append("$" + following)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + text[checkpoint:]


def field_ref(pod: JSON, path: str) -> str:
    """The value of a pod field (``metadata.name``, ``status.podIP``...) as text."""
    current: Any = pod
    for key in path.split("."):
        if not isinstance(current, dict):
            return ""
        current = current.get(key)
    return "" if current is None else str(current)


class ConfigError(Exception):
    """What makes the kubelet refuse to create a container (CreateContainerConfigError):
    a Secret or key its env refers to is missing."""


SecretLookup = Callable[[str, str], Mapping[str, str] | None]
"""A Secret's decoded data by namespace and name, None when there is no such Secret."""


def container_env(pod: JSON, spec: JSON, secret_data: SecretLookup | None = None) -> dict[str, str]:
    """The variables the kubelet gives container ``spec`` of ``pod`` (its ``env``,
    expanded; ``secretKeyRef`` values read from the Secret): what ``command`` and
    ``args`` are expanded with. Raises :class:`ConfigError` for a missing Secret or key."""
    env: dict[str, str] = {}
    namespace = pod["metadata"]["namespace"]
    for variable in spec.get("env") or []:
        name = variable.get("name")
        if not name:
            continue
        if "value" in variable:
            env[name] = expand(str(variable.get("value") or ""), env)
            continue
        source = variable.get("valueFrom") or {}
        secret_ref = source.get("secretKeyRef") or {}
        if secret_ref:
            secret, key = secret_ref.get("name", ""), secret_ref.get("key", "")
            data = secret_data(namespace, secret) if secret_data else None
            if data is None:
                raise ConfigError(f'secret "{secret}" not found')
            if key not in data:
                raise ConfigError(f"couldn't find key {key} in Secret {namespace}/{secret}")
            env[name] = data[key]
            continue
        ref = source.get("fieldRef") or {}
        if ref.get("fieldPath"):
            env[name] = field_ref(pod, ref["fieldPath"])
    return env


def process_env(pod: JSON, kubelet_env: dict[str, str], *, home: str) -> dict[str, str]:
    """The whole environment of the container's process (see the module docstring)."""
    return {
        "PATH": CONTAINER_PATH,
        "HOSTNAME": pod["metadata"]["name"],
        "HOME": home,
        **kubelet_env,
    }


def command_line(spec: JSON, image: ImageConfig, kubelet_env: dict[str, str]) -> list[str]:
    """The process a container runs, as containerd builds it from the pod spec and the
    image config: ``command`` set gives ``command + args`` (the image's CMD ignored);
    only ``args`` gives ``ENTRYPOINT + args``; neither gives ``ENTRYPOINT + CMD``. Only
    the container's own words are ``$(VAR)``-expanded: the image's are not the
    kubelet's."""
    command = [expand(str(word), kubelet_env) for word in spec.get("command") or []]
    args = [expand(str(word), kubelet_env) for word in spec.get("args") or []]
    if command:
        return command + args
    if args:
        return [*image.entrypoint, *args]
    return [*image.entrypoint, *image.cmd]
