"""How a step's process is started: its container's ``command`` and ``args``.

A running pod's containers can change their image and nothing else, so every step's
container carries its final command from the pod's creation on, and the placeholder the
step waits on has to survive that command. Two placeholders, two ways:

- ``pause_image`` (``registry.k8s.io/pause`` by default) runs nothing but its own
  binary: a ``command`` would make the container fail to start ("exec: /bin/sh: no such
  file"). A step's commands therefore go into ``args`` as ``/bin/sh -c script``, and
  the step image's ENTRYPOINT receives them. Right for every image without an
  ENTRYPOINT (busybox, alpine, python, golang, node, ...), wrong for an image with one:
  ``alpine/git`` would run ``git /bin/sh -c script``.
- ``placeholder_image`` (deploy/placeholder: one static binary, hard-linked at every
  path of :data:`PLACEHOLDER_PATHS`, that sleeps until stopped whatever path it is
  started as) survives a ``command`` that starts with one of those paths. A step's
  commands then become the container's ``command``, which replaces the step image's
  ENTRYPOINT: they run whatever the image, as they would on Drone or Woodpecker.

Either way a step without commands or entrypoint sets neither field and runs its image's
own ENTRYPOINT and CMD (a plugin step), and the placeholder its own.
"""

from __future__ import annotations

from collections.abc import Sequence

from buildruntime.errors import SpecError

DEFAULT_SHELL: tuple[str, ...] = ("/bin/sh", "-c")
"""What runs a step's commands unless the step names an ``entrypoint``."""

PLACEHOLDER_PATHS: frozenset[str] = frozenset(
    {
        "/bin/sh",
        "/bin/bash",
        "/bin/ash",
        "/usr/bin/sh",
        "/usr/bin/bash",
        "/usr/bin/env",
        "/busybox/sh",
    }
)
"""The paths deploy/placeholder's binary is linked at (deploy/placeholder/paths lists
the same; a test keeps them equal): a step's entrypoint on ``placeholder_image`` starts
with one of them."""


def script(commands: Sequence[str], *, with_errexit: bool) -> str:
    """The commands as one shell script. The default shell stops at the first failing
    command (``set -e`` first, like ``/bin/sh -e``); a custom entrypoint gets the lines
    as written. Commands are not echoed: the logs hold only what they print."""
    return "\n".join(["set -e", *commands] if with_errexit else commands)


def step_process(
    name: str,
    commands: Sequence[str],
    entrypoint: Sequence[str] | None,
    *,
    placeholder_runs_commands: bool,
) -> dict[str, list[str]]:
    """The ``command``/``args`` fields of step ``name``'s container, ``$`` escaped.

    ``placeholder_runs_commands``: the build's placeholder is ``placeholder_image``, so
    the process goes into ``command`` (see the module docstring); otherwise into
    ``args``. Raises :class:`SpecError` for an entrypoint the placeholder could not
    start as.
    """
    if not commands and entrypoint is None:
        return {}
    words = list(entrypoint) if entrypoint is not None else list(DEFAULT_SHELL)
    if commands:
        words.append(script(commands, with_errexit=entrypoint is None))
    # The kubelet expands $(VAR) in command and args and turns $$ into $: escape every
    # $ so the shell, not the kubelet, gives it meaning.
    escaped = [word.replace("$", "$$") for word in words]
    if not placeholder_runs_commands:
        return {"args": escaped}
    if words[0] not in PLACEHOLDER_PATHS:
        raise SpecError(
            f"steps[{name}].entrypoint",
            f"{words[0]!r} is not a path the placeholder image can start as "
            f"({', '.join(sorted(PLACEHOLDER_PATHS))}): start the entrypoint with one of "
            f'them, for example ["/usr/bin/env", {words[0]!r}, ...]',
        )
    return {"command": escaped}
