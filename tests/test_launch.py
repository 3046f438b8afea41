"""A step's container command line, on either placeholder (see buildruntime.launch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildruntime import BuildSpec, SpecError, StepSpec
from buildruntime.launch import PLACEHOLDER_PATHS, step_process
from buildruntime.spec import PAUSE_ANNOTATION, render_pod

PLACEHOLDER_DIR = Path(__file__).parent.parent / "deploy" / "placeholder"
PAUSE = "registry.k8s.io/pause:3.10"
PLACEHOLDER = "registry.example.com/buildruntime-placeholder:1"


def test_the_image_links_the_binary_at_every_path_the_runtime_relies_on() -> None:
    listed = (PLACEHOLDER_DIR / "paths").read_text().split()
    assert sorted(listed) == sorted(PLACEHOLDER_PATHS)
    assert len(listed) == len(set(listed))


@pytest.mark.parametrize(
    ("commands", "entrypoint", "on_pause", "on_placeholder"),
    [
        ((), None, {}, {}),
        (
            ("echo $HOME", "make"),
            None,
            {"args": ["/bin/sh", "-c", "set -e\necho $$HOME\nmake"]},
            {"command": ["/bin/sh", "-c", "set -e\necho $$HOME\nmake"]},
        ),
        (
            ("echo hi",),
            ("/bin/bash", "-c"),
            {"args": ["/bin/bash", "-c", "echo hi"]},
            {"command": ["/bin/bash", "-c", "echo hi"]},
        ),
        (
            (),
            ("/usr/bin/env", "terraform", "plan"),
            {"args": ["/usr/bin/env", "terraform", "plan"]},
            {"command": ["/usr/bin/env", "terraform", "plan"]},
        ),
    ],
)
def test_commands_go_to_args_on_pause_and_to_command_on_the_placeholder(
    commands: tuple[str, ...],
    entrypoint: tuple[str, ...] | None,
    on_pause: dict[str, list[str]],
    on_placeholder: dict[str, list[str]],
) -> None:
    assert step_process("s", commands, entrypoint, placeholder_runs_commands=False) == on_pause
    assert step_process("s", commands, entrypoint, placeholder_runs_commands=True) == on_placeholder


def _spec(**step: object) -> BuildSpec:
    return BuildSpec(build_id="b1", steps=[StepSpec(name="s", image="alpine/git", **step)])  # type: ignore[arg-type]


def test_an_entrypoint_the_placeholder_cannot_start_as_is_refused_naming_the_field() -> None:
    spec = _spec(entrypoint=["/kaniko/executor", "--context", "."])
    # On the pause placeholder it goes to args, as ever.
    pod = render_pod(spec, namespace="ci", pause_image=PAUSE)
    assert pod["spec"]["containers"][0]["args"][0] == "/kaniko/executor"
    with pytest.raises(SpecError) as raised:
        render_pod(spec, namespace="ci", pause_image=PAUSE, placeholder_image=PLACEHOLDER)
    assert raised.value.field == "steps[s].entrypoint"
    assert raised.value.build_id == "b1"
    assert "'/kaniko/executor'" in str(raised.value)
    assert "[\"/usr/bin/env\", '/kaniko/executor', ...]" in str(raised.value)


def test_the_build_s_own_pause_image_wins_and_keeps_commands_in_args() -> None:
    on_placeholder = render_pod(
        _spec(commands=["echo hi"]),
        namespace="ci",
        pause_image=PAUSE,
        placeholder_image=PLACEHOLDER,
    )
    (container,) = on_placeholder["spec"]["containers"]
    assert container["image"] == PLACEHOLDER
    assert on_placeholder["metadata"]["annotations"][PAUSE_ANNOTATION] == PLACEHOLDER
    assert container["command"] == ["/bin/sh", "-c", "set -e\necho hi"]
    own = BuildSpec(
        build_id="b2",
        pause_image="mirror.example.com/pause:3.10",
        steps=[StepSpec(name="s", image="alpine/git", commands=["echo hi"])],
    )
    pod = render_pod(own, namespace="ci", pause_image=PAUSE, placeholder_image=PLACEHOLDER)
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "mirror.example.com/pause:3.10"
    assert container["args"] == ["/bin/sh", "-c", "set -e\necho hi"]
    assert "command" not in container
