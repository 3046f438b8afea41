"""A container's environment and command line as the kubelet makes them.

Mimics ``pkg/kubelet/kubelet_pods.go`` and ``third_party/forked/golang/expansion``:
``env`` entries in order (``value``, or ``valueFrom.fieldRef`` for the pod's own
fields), each value expanded with the variables defined before it; then ``command`` and
``args`` expanded with the whole environment. ``$(VAR)`` is replaced when VAR is
defined and left as written otherwise; ``$$`` is a literal ``$`` (so a script's ``$$``
reaches the shell as ``$``). PATH and HOME come from this machine, since the steps run
here; HOSTNAME is the pod's name.
"""

from __future__ import annotations

import os
from typing import Any

from buildruntime.testing.objects import JSON


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


def environment(pod: JSON, spec: JSON) -> dict[str, str]:
    """The environment of container ``spec`` of ``pod``."""
    env = {
        "PATH": os.environ.get(
            "PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ),
        "HOME": os.environ.get("HOME", "/root"),
        "HOSTNAME": pod["metadata"]["name"],
    }
    for variable in spec.get("env") or []:
        name = variable.get("name")
        if not name:
            continue
        if "value" in variable:
            env[name] = expand(str(variable.get("value") or ""), env)
            continue
        ref = (variable.get("valueFrom") or {}).get("fieldRef") or {}
        if ref.get("fieldPath"):
            env[name] = field_ref(pod, ref["fieldPath"])
    return env


def command_line(spec: JSON, env: dict[str, str]) -> list[str]:
    """``command + args``, expanded."""
    words = (spec.get("command") or []) + (spec.get("args") or [])
    return [expand(str(word), env) for word in words]
