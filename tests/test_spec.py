"""Specs: validation names the field, rendering gives the pod an executor relies on."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buildruntime import BuildSpec, Runtime, SpecError, StepSpec
from buildruntime.images import normalize_image
from buildruntime.testing import FakeCluster

from .conftest import step


def test_rendered_pod_runs_every_step_on_the_placeholder_with_its_final_args() -> None:
    spec = BuildSpec(
        build_id="repo-42-1",
        steps=[
            StepSpec(
                name="test",
                image="golang:1.23",
                commands=["go vet ./...", "go test ./..."],
                env={"CGO_ENABLED": "0"},
                working_dir="/src",
                pull_policy="Always",
                resources={"limits": {"memory": "64Mi"}},
            ),
            StepSpec(
                name="custom",
                image="alpine:3.20",
                commands=["echo hi"],
                entrypoint=["/bin/ash", "-c"],
            ),
        ],
        labels={"team": "ci"},
        service_account="builder",
        node_selector={"pool": "ci"},
    )
    from buildruntime.spec import render_pod

    pod = render_pod(spec, namespace="ci", pause_image="registry.k8s.io/pause:3.10")
    assert pod["metadata"]["name"] == "repo-42-1"
    assert pod["metadata"]["namespace"] == "ci"
    assert pod["metadata"]["labels"] == {
        "team": "ci",
        "app.kubernetes.io/managed-by": "buildruntime",
        "buildruntime.io/build-id": "repo-42-1",
    }
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["serviceAccountName"] == "builder"
    assert pod["spec"]["nodeSelector"] == {"pool": "ci"}
    test, custom = pod["spec"]["containers"]
    assert test == {
        "name": "test",
        "image": "registry.k8s.io/pause:3.10",
        "args": ["/bin/sh", "-c", "set -e\ngo vet ./...\ngo test ./..."],
        "imagePullPolicy": "Always",
        "env": [
            {"name": "CI_WORKSPACE", "value": "/workspace"},
            {"name": "CGO_ENABLED", "value": "0"},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "workspace", "mountPath": "/workspace"}],
        "workingDir": "/src",
        "resources": {"limits": {"memory": "64Mi"}},
    }
    assert "command" not in test
    assert custom["args"] == ["/bin/ash", "-c", "echo hi"]
    assert custom["workingDir"] == "/workspace"
    assert pod["spec"]["volumes"] == [{"name": "workspace", "emptyDir": {}}]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "Bad_Name"}, "name"),
        ({"name": "x" * 64}, "name"),
        ({"image": "UPPER/case"}, "steps[ok].image"),
        ({"image": ""}, "steps[ok].image"),
        ({"image": "has space"}, "steps[ok].image"),
        ({"commands": "echo not a list"}, "steps[ok].commands"),
        ({"commands": ["ok", 3]}, "steps[ok].commands[1]"),
        ({"env": {"1BAD": "x"}}, "steps[ok].env['1BAD']"),
        ({"env": {"A": 1}}, "steps[ok].env['A']"),
        ({"pull_policy": "Sometimes"}, "steps[ok].pull_policy"),
        ({"timeout": -1}, "steps[ok].timeout"),
        ({"timeout": "soon"}, "steps[ok].timeout"),
        ({"working_dir": "relative"}, "steps[ok].working_dir"),
        ({"resources": {"limits": {"memory": "lots"}}}, "steps[ok].resources.limits.memory"),
        ({"resources": {"limitz": {}}}, "steps[ok].resources.limitz"),
        ({"entrypoint": []}, "steps[ok].entrypoint"),
    ],
)
def test_step_spec_errors_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    base: dict[str, Any] = {"name": "ok", "image": "busybox", "commands": ["true"]}
    with pytest.raises(SpecError) as caught:
        StepSpec(**{**base, **kwargs})
    assert caught.value.field == field
    assert field in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"build_id": "Repo_42"}, "build_id"),
        ({"steps": []}, "steps"),
        (
            {"steps": [StepSpec(name="a", image="busybox"), StepSpec(name="a", image="busybox")]},
            "steps[1].name",
        ),
        ({"steps": ["not a step"]}, "steps[0]"),
        ({"labels": {"bad key!": "x"}}, "labels['bad key!']"),
        ({"labels": {"ok": "bad value!"}}, "labels['ok']"),
        ({"labels": {"buildruntime.io/build-id": "x"}}, "labels['buildruntime.io/build-id']"),
        ({"pause_image": "NOT valid"}, "pause_image"),
    ],
)
def test_build_spec_errors_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    base: dict[str, Any] = {"build_id": "b-1", "steps": [StepSpec(name="a", image="busybox")]}
    with pytest.raises(SpecError) as caught:
        BuildSpec(**{**base, **kwargs})
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("reference", "normal"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("alpine:3.20", "docker.io/library/alpine:3.20"),
        ("myorg/app", "docker.io/myorg/app:latest"),
        ("localhost/pause:3.10", "localhost/pause:3.10"),
        ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
        ("localhost:5000/a/b", "localhost:5000/a/b:latest"),
    ],
)
def test_image_normalisation_matches_what_the_kubelet_reports(reference: str, normal: str) -> None:
    assert normalize_image(reference) == normal


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    name=_json | st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
    image=_json | st.sampled_from(["busybox", "alpine:3.20", "x/y:z"]),
    commands=_json,
    env=_json,
    pull_policy=_json | st.sampled_from(["Always", "Never"]),
    timeout=_json,
    resources=_json,
)
def test_any_step_input_gives_a_spec_or_a_spec_error(**fields: Any) -> None:
    try:
        StepSpec(**fields)
    except SpecError as error:
        assert error.field
        assert str(error)


@pytest.mark.anyio
async def test_invalid_build_never_creates_a_pod(cluster: FakeCluster) -> None:
    async with Runtime(cluster, namespace="ci") as rt:
        with pytest.raises(SpecError):
            await rt.setup_build(
                BuildSpec(build_id="x", steps=[StepSpec(name="a", image="bad image")])  # type: ignore[list-item]
            )
        with pytest.raises(SpecError) as caught:
            await rt.setup_build("not a spec")  # type: ignore[arg-type]
        assert caught.value.field == "spec"
    # Only the worker's Lease was created (on entering the runtime).
    assert not [r for r in cluster.requests if r.verb == "create" and r.resource != "leases"]


def test_workspace_and_volumes_render_to_mounts() -> None:
    from buildruntime import Workspace
    from buildruntime.spec import render_pod

    spec = BuildSpec(
        build_id="vol-1",
        steps=[
            StepSpec(name="a", image="busybox", commands=["true"], mounts={"cache": "/cache/"}),
            StepSpec(name="b", image="busybox", commands=["true"]),
        ],
        workspace=Workspace(path="/src", size_limit="1Gi", medium="Memory"),
        volumes={"cache": {"persistentVolumeClaim": {"claimName": "go-cache"}}},
    )
    pod = render_pod(spec, namespace="ci", pause_image="registry.k8s.io/pause:3.10")
    assert pod["spec"]["volumes"] == [
        {"name": "workspace", "emptyDir": {"sizeLimit": "1Gi", "medium": "Memory"}},
        {"name": "cache", "persistentVolumeClaim": {"claimName": "go-cache"}},
    ]
    a, b = pod["spec"]["containers"]
    assert a["volumeMounts"] == [
        {"name": "workspace", "mountPath": "/src"},
        {"name": "cache", "mountPath": "/cache"},
    ]
    assert b["volumeMounts"] == [{"name": "workspace", "mountPath": "/src"}]
    assert (a["workingDir"], a["env"][0]) == ("/src", {"name": "CI_WORKSPACE", "value": "/src"})
    claimed = render_pod(
        BuildSpec(build_id="vol-2", steps=[step("a")], workspace=Workspace(claim="shared")),
        namespace="ci",
        pause_image="registry.k8s.io/pause:3.10",
        workspace_path="/w",
    )
    assert claimed["spec"]["volumes"] == [
        {"name": "workspace", "persistentVolumeClaim": {"claimName": "shared"}}
    ]
    assert claimed["spec"]["containers"][0]["workingDir"] == "/w"


@pytest.mark.parametrize(
    ("build", "field"),
    [
        ({"volumes": {"workspace": {"emptyDir": {}}}}, "volumes['workspace']"),
        ({"volumes": {"Bad": {"emptyDir": {}}}}, "volumes['Bad']"),
        ({"volumes": {"x": {"nfs": {}}}}, "volumes['x']"),
        ({"volumes": {"x": {"emptyDir": {}, "hostPath": {}}}}, "volumes['x']"),
        (
            {"steps": [StepSpec(name="a", image="busybox", mounts={"nope": "/n"})]},
            "steps[a].mounts['nope']",
        ),
        (
            {
                "steps": [StepSpec(name="a", image="busybox", mounts={"x": "/workspace"})],
                "volumes": {"x": {"emptyDir": {}}},
            },
            "steps[a].mounts['x']",
        ),
    ],
)
def test_bad_volumes_name_the_field(build: dict[str, Any], field: str) -> None:
    from buildruntime.spec import render_pod

    def render() -> None:
        spec = BuildSpec(**{"build_id": "v", "steps": [step("a")], **build})
        render_pod(spec, namespace="ci", pause_image="registry.k8s.io/pause:3.10")

    with pytest.raises(SpecError) as info:
        render()
    assert info.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mounts": {"x": "relative"}}, "steps[a].mounts['x']"),
        ({"mounts": {"x": "/same", "y": "/same/"}}, "steps[a].mounts"),
        ({"env": {"CI_WORKSPACE": "/elsewhere"}}, "steps[a].env['CI_WORKSPACE']"),
    ],
)
def test_bad_mounts_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as info:
        StepSpec(name="a", image="busybox", **kwargs)
    assert info.value.field == field


def test_pod_policy_and_overrides_reach_the_pod() -> None:
    from buildruntime.spec import render_pod

    spec = BuildSpec(
        build_id="policy-1",
        steps=[
            StepSpec(
                name="a",
                image="busybox",
                commands=["true"],
                privileged=True,
                security_context={"runAsUser": 1000},
            )
        ],
        tolerations=[{"key": "ci", "operator": "Exists", "effect": "NoSchedule"}],
        runtime_class_name="gvisor",
        priority_class_name="ci-low",
        security_context={"fsGroup": 2000},
        dns_policy="None",
        dns_config={"nameservers": ["10.0.0.10"]},
        pod_overrides={
            "metadata": {"labels": {"team": "infra"}},
            "spec": {
                "containers": [{"name": "a", "stdin": False}],
                "enableServiceLinks": False,
            },
        },
    )
    pod = render_pod(spec, namespace="ci", pause_image="registry.k8s.io/pause:3.10")
    assert pod["spec"]["tolerations"] == [
        {"key": "ci", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod["spec"]["runtimeClassName"] == "gvisor"
    assert pod["spec"]["priorityClassName"] == "ci-low"
    assert pod["spec"]["securityContext"] == {"fsGroup": 2000}
    assert (pod["spec"]["dnsPolicy"], pod["spec"]["dnsConfig"]) == (
        "None",
        {"nameservers": ["10.0.0.10"]},
    )
    assert pod["spec"]["enableServiceLinks"] is False
    assert pod["metadata"]["labels"]["team"] == "infra"
    (container,) = pod["spec"]["containers"]
    assert container["securityContext"] == {"runAsUser": 1000, "privileged": True}
    assert container["stdin"] is False
    assert container["image"] == "registry.k8s.io/pause:3.10"


@pytest.mark.parametrize(
    "overrides",
    [
        {"spec": {"containers": [{"name": "a", "image": "evil:1"}]}},
        {"spec": {"containers": [{"name": "a", "args": ["sh"]}]}},
        {"spec": {"containers": [{"name": "extra", "image": "busybox"}]}},
        {"metadata": {"labels": {"buildruntime.io/build-id": "other"}}},
        {"metadata": {"annotations": {"buildruntime.io/pause-image": None}}},
        {"spec": {"restartPolicy": "Always"}},
        {"spec": {"volumes": [{"name": "workspace", "hostPath": {"path": "/"}}]}},
    ],
)
def test_an_override_of_what_the_runtime_relies_on_is_refused(overrides: dict[str, Any]) -> None:
    from buildruntime.spec import render_pod

    spec = BuildSpec(build_id="policy-2", steps=[step("a")], pod_overrides=overrides)
    with pytest.raises(SpecError) as info:
        render_pod(spec, namespace="ci", pause_image="registry.k8s.io/pause:3.10")
    assert info.value.field == "pod_overrides"
