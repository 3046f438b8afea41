"""Pipeline files: YAML in, a BuildSpec or one SpecError naming the field out."""

from __future__ import annotations

import os
import re
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buildruntime import BuildSpec, SpecError, StepSpec, Workspace
from buildruntime.pipeline import (
    POLICY_KEYS,
    PipelinePlan,
    StepRules,
    generate_build_id,
    load_pipeline,
    load_pipeline_text,
    load_plan_file,
    load_plan_text,
    pipeline_from_data,
    plan_from_data,
)
from buildruntime.secrets import ExistingSecret
from buildruntime.spec import dns1123_label_problem

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

FULL = """
build_id: repo-42-1
labels: {team: ci, tier: "2"}
annotations: {example.com/note: "any text at all"}
service_account: builder
node_selector: {kubernetes.io/os: linux}
pause_image: registry.k8s.io/pause:3.10
steps:
  - name: test
    image: golang:1.23
    commands: ["go test ./..."]
    entrypoint: ["/bin/bash", "-c"]
    env: {CGO_ENABLED: 0, DEBUG: true, NAME: x}
    working_dir: /src
    pull_policy: Always
    timeout: 90
    resources:
      requests: {cpu: 500m, memory: 64Mi}
      limits: {cpu: 2, memory: 1Gi}
  - name: lint
    image: alpine:3.20
    commands: |
      echo one
      echo two
"""


def problem(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_pipeline_text(text)
    return info.value


def test_every_field_is_read() -> None:
    spec = load_pipeline_text(FULL)
    assert spec.build_id == "repo-42-1"
    assert dict(spec.labels) == {"team": "ci", "tier": "2"}
    assert dict(spec.annotations) == {"example.com/note": "any text at all"}
    assert spec.service_account == "builder"
    assert dict(spec.node_selector) == {"kubernetes.io/os": "linux"}
    assert spec.pause_image == "registry.k8s.io/pause:3.10"
    test, lint = spec.steps
    assert test == StepSpec(
        name="test",
        image="golang:1.23",
        commands=["go test ./..."],
        entrypoint=["/bin/bash", "-c"],
        env={"CGO_ENABLED": "0", "DEBUG": "true", "NAME": "x"},
        working_dir="/src",
        pull_policy="Always",
        timeout=90.0,
        resources={
            "requests": {"cpu": "500m", "memory": "64Mi"},
            "limits": {"cpu": "2", "memory": "1Gi"},
        },
    )
    assert lint.commands == ("echo one\necho two\n",)
    assert lint.pull_policy == "IfNotPresent"


def test_minimal_pipeline_from_the_contract() -> None:
    spec = load_pipeline_text(
        "build_id: hello-1\nsteps:\n  - name: greet\n    image: busybox\n"
        '    commands: ["echo hello", "echo done"]\n'
    )
    assert spec == BuildSpec(
        build_id="hello-1",
        steps=[StepSpec(name="greet", image="busybox", commands=["echo hello", "echo done"])],
    )


def test_build_id_is_generated_from_the_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "My_Pipeline.v2.yaml"
    path.write_text(
        "steps: [{name: a, image: busybox, commands: [true]}]\n".replace("[true]", "['true']")
    )
    first = load_pipeline(path)
    second = load_pipeline(str(path))
    assert re.fullmatch(r"my-pipeline-v2-[0-9a-f]{6}", first.build_id)
    assert first.build_id != second.build_id
    assert first.steps == second.steps


@pytest.mark.parametrize(
    "stem", ["", "---", "UPPER", "a" * 200, "日本語", "x.y_z", "-lead-and-trail-", "9"]
)
def test_generated_build_ids_are_dns_labels(stem: str) -> None:
    assert dns1123_label_problem(generate_build_id(stem)) is None


def test_examples_all_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPLOY_TOKEN", "tok-3f9a2c71e5")  # examples/secrets.yaml's
    names = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
    assert {"hello.yaml", "failing.yaml", "missing-image.yaml", "logs.yaml"} <= set(names)
    for name in names:
        assert isinstance(load_pipeline(EXAMPLES / name), BuildSpec)


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        (
            "steps:\n  - name: a\n    image: busybox\n    comands: [x]\n",
            "steps[0]",
            "unknown key 'comands' (did you mean 'commands'?)",
        ),
        ("steps: [{name: a, image: busybox}, {name: b}]", "steps[1].image", "missing"),
        (
            "steps: [{name: a, image: busybox}, {name: b, image: 'Not An Image'}]",
            "steps[1].image",
            "whitespace",
        ),
        ("steps: [{name: a, image: BusyBox}]", "steps[0].image", "not a valid image reference"),
        ("steps: [{name: A_b, image: busybox}]", "steps[0].name", "DNS-1123"),
        (
            "steps: [{name: a, image: busybox}, {name: a, image: busybox}]",
            "steps[1].name",
            "duplicate",
        ),
        ("steps: [{name: 7, image: busybox}]", "steps[0].name", "must be a string, not a number"),
        (
            "steps: [{name: a, image: busybox, commands: [echo a: b]}]",
            "steps[0].commands[0]",
            "quote the whole line",
        ),
        (
            "steps: [{name: a, image: busybox, commands: [1]}]",
            "steps[0].commands[0]",
            "must be a string",
        ),
        (
            "steps: [{name: a, image: busybox, commands: {a: b}}]",
            "steps[0].commands",
            "list of shell lines",
        ),
        (
            "steps: [{name: a, image: busybox, entrypoint: sh}]",
            "steps[0].entrypoint",
            "list of strings",
        ),
        ("steps: [{name: a, image: busybox, entrypoint: []}]", "steps[0].entrypoint", "non-empty"),
        ("steps: [{name: a, image: busybox, env: [A]}]", "steps[0].env", "mapping"),
        (
            "steps: [{name: a, image: busybox, env: {A: [1]}}]",
            "steps[0].env['A']",
            "must be a string",
        ),
        (
            "steps: [{name: a, image: busybox, env: {1 A: b}}]",
            "steps[0].env['1 A']",
            "environment variable",
        ),
        (
            "steps: [{name: a, image: busybox, working_dir: src}]",
            "steps[0].working_dir",
            "absolute",
        ),
        (
            "steps: [{name: a, image: busybox, pull_policy: Sometimes}]",
            "steps[0].pull_policy",
            "Always",
        ),
        ("steps: [{name: a, image: busybox, timeout: -1}]", "steps[0].timeout", "positive"),
        ("steps: [{name: a, image: busybox, timeout: .inf}]", "steps[0].timeout", "positive"),
        (
            "steps: [{name: a, image: busybox, timeout: soon}]",
            "steps[0].timeout",
            "number of seconds",
        ),
        (
            "steps: [{name: a, image: busybox, resources: {limit: {}}}]",
            "steps[0].resources",
            "unknown key 'limit'",
        ),
        (
            "steps: [{name: a, image: busybox, resources: {limits: {cpu: lots}}}]",
            "steps[0].resources.limits.cpu",
            "not a quantity",
        ),
        ("steps: [x]", "steps[0]", "must be a mapping"),
        ("steps: []", "steps", "at least one"),
        ("steps: {a: 1}", "steps", "must be a list"),
        ("build_id: x\n", "steps", "missing"),
        ("stepz: []", "pipeline", "unknown key 'stepz' (did you mean 'steps'?)"),
        ("- a\n- b\n", "pipeline", "expected a mapping"),
        ("", "pipeline", "empty"),
        ("build_id: Hello\nsteps: [{name: a, image: busybox}]", "build_id", "DNS-1123"),
        ("build_id: [1]\nsteps: [{name: a, image: busybox}]", "build_id", "must be a string"),
        ("labels: {a: [b]}\nsteps: [{name: a, image: busybox}]", "labels['a']", "must be a string"),
        (
            "labels: {a: 'b c'}\nsteps: [{name: a, image: busybox}]",
            "labels['a']",
            "not a valid label value",
        ),
        (
            "labels: {app.kubernetes.io/managed-by: me}\nsteps: [{name: a, image: busybox}]",
            "labels['app.kubernetes.io/managed-by']",
            "set by the runtime",
        ),
        (
            "service_account: 3\nsteps: [{name: a, image: busybox}]",
            "service_account",
            "must be a string",
        ),
        ("pause_image: 'a b'\nsteps: [{name: a, image: busybox}]", "pause_image", "whitespace"),
        (
            "steps: [{name: a, image: busybox, env: {A: b}, environment: {A: c}}]",
            "steps[0]",
            "step 'a' has both 'environment' and 'env'",
        ),
        (
            "steps: [{name: a, image: busybox, environment: {A: [1]}}]",
            "steps[0].environment['A']",
            "must be a string",
        ),
        ("steps: [{name: a, image: busybox, environment: [A]}]", "steps[0].environment", "mapping"),
        (
            "steps: [{name: a, image: busybox, failure: never}]",
            "steps[0].failure",
            "'never' is not one of fail, ignore",
        ),
        (
            "steps: [{name: a, image: busybox, failure: true}]",
            "steps[0].failure",
            "is not one of fail, ignore",
        ),
        (
            "steps: [{name: a, image: busybox, when: failure}]",
            "steps[0].when",
            "must be a mapping such as {status: [success, failure]}",
        ),
        (
            "steps: [{name: a, image: busybox, when: {stauts: failure}}]",
            "steps[0].when",
            "unknown key 'stauts' (did you mean 'status'?)",
        ),
        (
            "steps: [{name: a, image: busybox, when: {status: [success, failed]}}]",
            "steps[0].when.status",
            "'failed' is not one of success, failure",
        ),
        (
            "steps: [{name: a, image: busybox, when: {status: []}}]",
            "steps[0].when.status",
            "at least one of success, failure",
        ),
        (
            "steps: [{name: a, image: busybox, when: {status: {a: 1}}}]",
            "steps[0].when.status",
            "must be success, failure or a list of them",
        ),
        (
            "steps: [{name: a, image: busybox}, {name: b, image: busybox, depends_on: [b]}]",
            "steps[1].depends_on",
            "step 'b' depends on itself",
        ),
        (
            "steps: [{name: build, image: busybox}, {name: b, image: busybox, "
            "depends_on: [biuld]}]",
            "steps[1].depends_on",
            "step 'b' depends on 'biuld', which is no step (did you mean 'build'?)",
        ),
        (
            "steps: [{name: a, image: busybox, depends_on: {a: 1}}]",
            "steps[0].depends_on",
            "must be a list of step names",
        ),
        (
            "steps: [{name: a, image: busybox, depends_on: [1]}]",
            "steps[0].depends_on",
            "step names must be strings",
        ),
        (
            "steps: [{name: a, image: busybox, depends_on: [c]}, "
            "{name: b, image: busybox, depends_on: [a]}, "
            "{name: c, image: busybox, depends_on: [b]}]",
            "steps",
            "depends_on forms a cycle: a -> c -> b -> a",
        ),
        (
            "steps: [{name: a, image: busybox}, {name: x, image: busybox, depends_on: [y]}, "
            "{name: y, image: busybox, depends_on: [x]}]",
            "steps",
            "depends_on forms a cycle: x -> y -> x",
        ),
    ],
)
def test_each_problem_names_its_field(text: str, field: str, words: str) -> None:
    error = problem(text)
    assert error.field == field
    assert words in error.problem
    assert str(error).startswith(f"{field}: ") or f" {field}: " in str(error)
    assert "\n" not in str(error)


def test_environment_is_the_key_and_env_its_alias() -> None:
    for key in ("environment", "env"):
        spec = load_pipeline_text(
            f"steps: [{{name: a, image: busybox, {key}: {{CGO_ENABLED: 0, NAME: x}}}}]"
        )
        assert dict(spec.steps[0].env) == {"CGO_ENABLED": "0", "NAME": "x"}, key


RULES = """
steps:
  - {name: build, image: busybox}
  - {name: lint, image: busybox, failure: ignore, depends_on: [build]}
  - {name: unit, image: busybox, failure: fail, depends_on: build}
  - {name: notify, image: busybox, when: {status: failure}, depends_on: [lint, unit, lint]}
  - {name: always, image: busybox, when: {status: [success, failure]}}
  - {name: happy, image: busybox, when: {status: success}}
"""


def test_step_rules_are_read() -> None:
    plan = load_plan_text(RULES)
    assert isinstance(plan, PipelinePlan)
    assert [s.name for s in plan.spec.steps] == [
        "build",
        "lint",
        "unit",
        "notify",
        "always",
        "happy",
    ]
    assert dict(plan.rules) == {
        "build": StepRules(),
        "lint": StepRules(failure="ignore", depends_on=("build",)),
        "unit": StepRules(depends_on=("build",)),
        "notify": StepRules(when_status=frozenset({"failure"}), depends_on=("lint", "unit")),
        "always": StepRules(when_status=frozenset({"success", "failure"})),
        "happy": StepRules(),
    }
    assert plan.rules["lint"].ignores_failure
    assert not plan.rules["unit"].ignores_failure
    assert plan.rules["notify"].runs_when("failure")
    assert not plan.rules["notify"].runs_when("success")
    assert plan.rules["always"].runs_when("success")
    assert plan.rules["always"].runs_when("failure")
    assert plan.rules["happy"].runs_when("success")
    assert not plan.rules["happy"].runs_when("failure")
    # The spec the runtime takes is the same with or without the rules.
    assert load_pipeline_text(RULES).steps == plan.spec.steps


def test_without_depends_on_each_step_needs_the_one_before() -> None:
    plan = load_plan_text(
        "steps: [{name: a, image: busybox}, {name: b, image: busybox, failure: ignore}, "
        "{name: c, image: busybox, when: {status: failure}}]"
    )
    assert not plan.is_dag
    assert [plan.needs(n) for n in ("a", "b", "c")] == [(), ("a",), ("b",)]


def test_with_any_depends_on_steps_without_it_need_nothing() -> None:
    # Woodpecker's rule: one depends_on anywhere makes the file a DAG.
    plan = load_plan_text(RULES)
    assert plan.is_dag
    assert {s.name: plan.needs(s.name) for s in plan.spec.steps} == {
        "build": (),
        "lint": ("build",),
        "unit": ("build",),
        "notify": ("lint", "unit"),
        "always": (),
        "happy": (),
    }
    # An empty list declares "no dependencies" and still makes a DAG.
    empty = load_plan_text(
        "steps: [{name: a, image: busybox}, {name: b, image: busybox, depends_on: []}]"
    )
    assert empty.is_dag
    assert empty.needs("b") == ()
    assert empty.needs("a") == ()


def test_plans_from_files_and_data(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    assert dict(load_plan_file(path).rules) == dict(load_plan_text(RULES).rules)
    assert dict(plan_from_data(yaml.safe_load(RULES)).rules) == dict(load_plan_text(RULES).rules)
    assert load_plan_file(path).spec.build_id.startswith("rules-")


def test_build_id_numbers_are_taken_as_text() -> None:
    assert load_pipeline_text("build_id: 42\nsteps: [{name: a, image: busybox}]").build_id == "42"


def test_yaml_syntax_error_says_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("steps:\n  - name: a\n    image: busybox\n   commands: [x\n")
    with pytest.raises(SpecError) as info:
        load_pipeline(path)
    error = info.value
    assert error.field == "pipeline"
    assert re.search(rf"{re.escape(str(path))}: line \d+, column \d+: ", error.problem)
    assert "\n" not in str(error)


@pytest.mark.parametrize(
    "text",
    [
        "steps: [{name: a, image: busybox}]\n---\nsteps: []\n",  # two documents
        "a: *nowhere\n",  # an undefined alias
        "? [a, b]\n: c\n",  # an unhashable key
        "steps: !!python/object:os.system {}\n",  # an unsafe tag
        "\t- tab\n",
        "steps: [{name: a, image: busybox}\n",  # unterminated flow
    ],
)
def test_yaml_problems_are_spec_errors(text: str) -> None:
    error = problem(text)
    assert error.field == "pipeline"
    assert "line " in error.problem
    assert "\n" not in str(error)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_pipeline(tmp_path / "absent.yaml")
    with pytest.raises(SpecError, match="is a directory"):
        load_pipeline(tmp_path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"steps: \xff\xfe\n")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_pipeline(binary)


def test_text_and_path_are_told_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.yml").write_text("build_id: from-file\nsteps: [{name: a, image: busybox}]\n")
    assert load_pipeline("p.yml").build_id == "from-file"
    assert (
        load_pipeline("{build_id: inline, steps: [{name: a, image: busybox}]}").build_id == "inline"
    )
    with pytest.raises(SpecError, match="no such file"):
        load_pipeline("other.yaml")


# -- anything at all gives a BuildSpec or a SpecError ------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "busybox",
            "a",
            "b",
            "echo hi",
            "IfNotPresent",
            "Never",
            "/src",
            "64Mi",
            "500m",
            "ignore",
            "fail",
            "success",
            "failure",
        ]
    ),
)
keys = st.one_of(
    st.sampled_from(
        [
            "name",
            "image",
            "commands",
            "entrypoint",
            "env",
            "working_dir",
            "pull_policy",
            "timeout",
            "resources",
            "requests",
            "limits",
            "cpu",
            "environment",
            "failure",
            "when",
            "status",
            "depends_on",
            "ignore",
            "success",
            "detach",
            "ports",
            "volumes",
            "cache",
            "cache:/c",
            "cache:/workspace",
            "emptyDir",
            "configMap",
            "claimName",
            "path",
            "/src",
            "size_limit",
            "medium",
            "Memory",
            "claim",
            "5432/tcp",
            "from_env",
            "from_file",
            "value",
            "from_secret",
            "source",
            "target",
            "secret",
            "key",
            "username",
            "password",
        ]
    ),
    st.text(alphabet=string.ascii_letters + "_-./", max_size=8),
    st.integers(),
    st.booleans(),
    st.none(),
)
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=20,
)
steps = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {
                "name": st.sampled_from(["a", "b", "Bad"]),
                "image": st.sampled_from(["busybox", "X y"]),
            },
            optional={
                "commands": values,
                "entrypoint": values,
                "env": values,
                "working_dir": values,
                "pull_policy": values,
                "timeout": values,
                "resources": values,
                "environment": values,
                "failure": values,
                "when": st.one_of(values, st.fixed_dictionaries({"status": values})),
                "depends_on": values,
                "detach": st.one_of(st.booleans(), values),
                "ports": st.one_of(st.lists(st.integers(-1, 70000), max_size=2), values),
                "volumes": st.one_of(st.lists(st.sampled_from(["cache:/c", "x:/y"])), values),
                "secrets": values,
                "security_context": values,
                "privileged": values,
            },
        ),
        values,
    ),
    max_size=3,
)
documents = st.one_of(
    values,
    st.fixed_dictionaries(
        {"steps": st.one_of(steps, values)},
        optional={
            "build_id": st.one_of(scalars, st.sampled_from(["b-1", "B"])),
            "labels": values,
            "annotations": values,
            "service_account": values,
            "node_selector": values,
            "pause_image": values,
            "services": st.one_of(steps, values),
            "workspace": st.one_of(
                values,
                st.fixed_dictionaries(
                    {}, optional={k: values for k in ("path", "size_limit", "medium", "claim")}
                ),
            ),
            "volumes": st.one_of(
                values,
                st.fixed_dictionaries({"cache": st.one_of(values, st.just({"emptyDir": {}}))}),
            ),
            "secrets": st.one_of(
                values, st.dictionaries(keys, st.dictionaries(keys, scalars, max_size=2))
            ),
            "allow_literal_secrets": values,
            "image_pull_secrets": values,
            "registries": values,
            **{key: values for key in POLICY_KEYS},
        },
    ),
)


def _accepts(document: object) -> None:
    try:
        spec = pipeline_from_data(document)
    except SpecError as error:
        assert error.field
        assert "\n" not in str(error)
    else:
        assert isinstance(spec, BuildSpec)
        plan = plan_from_data(document)
        assert set(plan.rules) == {step.name for step in plan.spec.steps}
        for step in plan.spec.steps:
            assert set(plan.needs(step.name)) <= set(plan.rules) - {step.name}


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_document_gives_a_spec_or_a_spec_error(document: object) -> None:
    _accepts(document)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_document_through_yaml_text(document: object) -> None:
    try:
        text = yaml.safe_dump(document)
    except yaml.YAMLError:
        return
    try:
        load_pipeline_text(text)
    except SpecError as error:
        assert "\n" not in str(error)


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(list("steps:name-image[]{},'\"&*!|>?#\t\n :01ab")), max_size=80
    )
)
def test_any_text_gives_a_spec_or_a_spec_error(text: str) -> None:
    try:
        load_pipeline_text(text)
    except SpecError as error:
        assert "\n" not in str(error)


# -- services, detach, ports, workspace, volumes -----------------------------------------

SERVICES = """
workspace: {path: /src, size_limit: 1Gi}
volumes:
  cache: {persistentVolumeClaim: {claimName: build-cache}}
  settings: {configMap: {name: app-settings}}
  scratch: {emptyDir: {medium: Memory}}
services:
  - {name: db, image: busybox, ports: [5432], commands: ["exec nc -lk -p 5432"]}
  - {name: cache-server, image: busybox, ports: ["6379/tcp", "6380"], detach: true}
steps:
  - name: build
    image: busybox
    volumes: ["cache:/root/.cache", "settings:/etc/app/"]
  - {name: serve, image: busybox, detach: true, ports: [8080], depends_on: [build]}
  - {name: test, image: busybox, depends_on: [serve, db]}
"""


def test_services_are_detached_steps_that_come_first() -> None:
    plan = load_plan_text(SERVICES)
    assert [s.name for s in plan.spec.steps] == ["db", "cache-server", "build", "serve", "test"]
    assert plan.services == ("db", "cache-server")
    db, cache, build, serve, test = plan.spec.steps
    assert (db.detach, db.ports, db.commands) == (True, (5432,), ("exec nc -lk -p 5432",))
    assert (cache.detach, cache.ports) == (True, (6379, 6380))
    assert (serve.detach, serve.ports) == (True, (8080,))
    assert not build.detach
    assert not test.detach
    # Services need nothing: they start before every step. A step may still name one.
    assert {s.name: plan.needs(s.name) for s in plan.spec.steps} == {
        "db": (),
        "cache-server": (),
        "build": (),
        "serve": ("build",),
        "test": ("serve", "db"),
    }


def test_without_depends_on_the_first_step_needs_no_service() -> None:
    plan = load_plan_text(
        "services: [{name: db, image: busybox}]\n"
        "steps: [{name: a, image: busybox}, {name: b, image: busybox, detach: true},"
        " {name: c, image: busybox}]\n"
    )
    assert not plan.is_dag
    assert [plan.needs(n) for n in ("db", "a", "b", "c")] == [(), (), ("a",), ("b",)]
    assert plan.services == ("db",)


def test_workspace_and_volumes_are_read() -> None:
    spec = load_plan_text(SERVICES).spec
    assert spec.workspace == Workspace(path="/src", size_limit="1Gi")
    assert dict(spec.volumes) == {
        "cache": {"persistentVolumeClaim": {"claimName": "build-cache"}},
        "settings": {"configMap": {"name": "app-settings"}},
        "scratch": {"emptyDir": {"medium": "Memory"}},
    }
    assert dict(spec.step("build").mounts) == {"cache": "/root/.cache", "settings": "/etc/app"}
    assert dict(spec.step("test").mounts) == {}


@pytest.mark.parametrize(
    ("text", "workspace"),
    [
        ("workspace: /src", Workspace(path="/src")),
        ("workspace: {path: /w, medium: memory}", Workspace(path="/w", medium="Memory")),
        ("workspace: {size_limit: 2Gi}", Workspace(size_limit="2Gi")),
        ("workspace: {claim: my-cache}", Workspace(claim="my-cache")),
        ("workspace: {size_limit: 1000000}", Workspace(size_limit="1000000")),
    ],
)
def test_workspace_forms(text: str, workspace: Workspace) -> None:
    spec = load_pipeline_text(f"{text}\nsteps: [{{name: a, image: busybox}}]")
    assert spec.workspace == workspace


def test_without_the_new_keys_the_spec_is_as_before() -> None:
    spec = load_pipeline_text("steps: [{name: a, image: busybox}]")
    assert spec.workspace is None
    assert dict(spec.volumes) == {}
    assert not spec.steps[0].detach


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("services: {name: db}", "services", "must be a list of services, not a mapping"),
        ("services: [db]", "services[0]", "must be a mapping"),
        ("services: [{name: db}]", "services[0].image", "missing"),
        (
            "services: [{name: db, image: busybox, when: {status: failure}}]",
            "services[0]",
            "a service has no 'when': services start before every step",
        ),
        (
            "services: [{name: db, image: busybox, depends_on: [a]}]",
            "services[0]",
            "a service has no 'depends_on'",
        ),
        (
            "services: [{name: db, image: busybox, failure: ignore}]",
            "services[0]",
            "a service has no 'failure'",
        ),
        (
            "services: [{name: db, image: busybox, detach: false}]",
            "services[0].detach",
            "a service is always detached",
        ),
        (
            "services: [{name: db, image: busybox, prots: [1]}]",
            "services[0]",
            "unknown key 'prots' (did you mean 'ports'?)",
        ),
        (
            "services: [{name: a, image: busybox}]",
            "steps[0].name",
            "duplicate step name 'a', already that of services[0] (services and steps",
        ),
        (
            "services: [{name: db, image: busybox}, {name: db, image: busybox}]",
            "services[1].name",
            "duplicate step name 'db', already that of services[0]",
        ),
        (
            "services: [{name: Db, image: busybox}]",
            "services[0].name",
            "not a DNS-1123 label",
        ),
        (
            "services: [{name: db, image: busybox, ports: [0]}]",
            "services[0].ports[0]",
            "0 is not a TCP port number",
        ),
        (
            "services: [{name: db, image: busybox, ports: ['53/udp']}]",
            "services[0].ports[0]",
            "'53/udp' is not a TCP port number",
        ),
        (
            "services: [{name: db, image: busybox, ports: {a: 1}}]",
            "services[0].ports",
            "must be a list of TCP port numbers",
        ),
        (
            "services: [{name: db, image: busybox, ports: [true]}]",
            "services[0].ports[0]",
            "is not a TCP port number",
        ),
        (
            "steps+: [{name: b, image: busybox, detach: yes please}]",
            "steps[1].detach",
            "true or false",
        ),
        (
            "steps+: [{name: b, image: busybox, ports: [80]}]",
            "steps[1].ports",
            "only a detached step (a service) has ports",
        ),
        ("workspace: [/src]", "workspace", "must be a path or a mapping"),
        ("workspace: src", "workspace.path", "must be an absolute path"),
        ("workspace: {path: /}", "workspace.path", "must not be the container's root"),
        ("workspace: {pth: /src}", "workspace", "unknown key 'pth' (did you mean 'path'?)"),
        ("workspace: {size_limit: lots}", "workspace.size_limit", "is not a quantity"),
        ("workspace: {size_limit: [1]}", "workspace.size_limit", "must be a quantity"),
        ("workspace: {medium: disk}", "workspace.medium", "'disk' is not Memory"),
        ("workspace: {claim: Bad_Name}", "workspace.claim", "is not a claim name"),
        ("workspace: {path: 7}", "workspace.path", "must be a string, not a number"),
        (
            "workspace: {claim: c, size_limit: 1Gi}",
            "workspace",
            "size_limit and medium apply to an emptyDir",
        ),
        ("volumes: [cache]", "volumes", "must be a mapping of name to volume source"),
        ("volumes: {cache: {}}", "volumes.cache", "must hold exactly one of"),
        ("volumes: {cache: tmp}", "volumes.cache", "must be a mapping with one of"),
        (
            "volumes: {cache: {emptydir: {}}}",
            "volumes.cache",
            "'emptydir' is not one of configMap, secret, emptyDir, persistentVolumeClaim,"
            " hostPath (did you mean 'emptyDir'?)",
        ),
        ("volumes: {cache: {emptyDir: 1}}", "volumes.cache.emptyDir", "must be a mapping"),
        (
            "volumes: {cache: {persistentVolumeClaim: {}}}",
            "volumes.cache.persistentVolumeClaim",
            "needs claimName",
        ),
        ("volumes: {cfg: {configMap: {}}}", "volumes.cfg.configMap", "needs name"),
        ("volumes: {s: {secret: {name: x}}}", "volumes.s.secret", "needs secretName"),
        ("volumes: {h: {hostPath: {}}}", "volumes.h.hostPath", "needs path"),
        ("volumes: {Cache: {emptyDir: {}}}", "volumes.Cache", "DNS-1123 label"),
        ("volumes: {workspace: {emptyDir: {}}}", "volumes.workspace", "the workspace's own"),
        ("volumes: {1: {emptyDir: {}}}", "volumes", "names must be strings"),
        (
            "steps+: [{name: b, image: busybox, volumes: cache:/c}]",
            "steps[1].volumes",
            'must be a list of "name:/path" strings, not a string',
        ),
        (
            "steps+: [{name: b, image: busybox, volumes: [{cache: /c}]}]",
            "steps[1].volumes[0]",
            'must be a "name:/path" string, not a mapping',
        ),
        (
            "steps+: [{name: b, image: busybox, volumes: ['nope:/c']}]",
            "steps[1].volumes[0]",
            "no volume 'nope' under volumes (none declared)",
        ),
        (
            "volumes: {cache: {emptyDir: {}}}\n"
            "steps+: [{name: b, image: busybox, volumes: ['cahce:/c']}]",
            "steps[1].volumes[0]",
            "no volume 'cahce' under volumes (cache)",
        ),
        (
            "volumes: {cache: {emptyDir: {}}}\n"
            "steps+: [{name: b, image: busybox, volumes: ['cache']}]",
            "steps[1].volumes[0]",
            "'cache' is not \"name:/path\"",
        ),
        (
            "volumes: {cache: {emptyDir: {}}}\n"
            "steps+: [{name: b, image: busybox, volumes: ['cache:relative']}]",
            "steps[1].volumes[0]",
            "'cache:relative' is not \"name:/path\" (an absolute path)",
        ),
        (
            "volumes: {cache: {emptyDir: {}}}\n"
            "steps+: [{name: b, image: busybox, volumes: ['cache:/c:ro']}]",
            "steps[1].volumes[0]",
            'is not "name:/path"',
        ),
        (
            "steps+: [{name: b, image: busybox, volumes: ['/var/run/docker.sock:/s']}]",
            "steps[1].volumes[0]",
            "mounts a host path: declare it under volumes",
        ),
        (
            "volumes: {cache: {emptyDir: {}}}\n"
            "steps+: [{name: b, image: busybox, volumes: ['cache:/workspace/']}]",
            "steps[1].volumes[0]",
            "/workspace is the workspace's path",
        ),
        (
            "workspace: /src\nvolumes: {cache: {emptyDir: {}}}\n"
            "steps+: [{name: b, image: busybox, volumes: ['cache:/src']}]",
            "steps[1].volumes[0]",
            "/src is the workspace's path",
        ),
        (
            "volumes: {cache: {emptyDir: {}}}\n"
            "steps+: [{name: b, image: busybox, volumes: ['cache:/a', 'cache:/b']}]",
            "steps[1].volumes[1]",
            "volume 'cache' is mounted twice",
        ),
        (
            "volumes: {a: {emptyDir: {}}, b: {emptyDir: {}}}\n"
            "steps+: [{name: x, image: busybox, volumes: ['a:/m', 'b:/m/']}]",
            "steps[1].volumes[1]",
            "'a' is already mounted at /m",
        ),
        (
            "volumes: {cache: {emptyDir: {}}}\n"
            "services: [{name: db, image: busybox, volumes: ['cache:rel']}]",
            "services[0].volumes[0]",
            'is not "name:/path"',
        ),
    ],
)
def test_each_problem_of_the_new_keys_names_its_field(text: str, field: str, words: str) -> None:
    # "steps+:" adds to one valid step, so that each case holds one problem.
    if "steps+:" in text:
        head, _, more = text.partition("steps+: [")
        text = f"{head}steps: [{{name: a, image: busybox}}, {more}"
    else:
        text = f"{text}\nsteps: [{{name: a, image: busybox}}]"
    error = problem(text)
    assert error.field == field, error
    assert words in error.problem, error
    assert "\n" not in str(error)


def test_a_plan_keeps_services_detached() -> None:
    spec = BuildSpec(build_id="b-1", steps=[StepSpec(name="db", image="busybox")])
    with pytest.raises(SpecError, match="a service must be a detached step"):
        PipelinePlan(spec, services=("db",))


# -- secrets, image_pull_secrets, registries and the pod policy fields -----------------

TOKEN = "tok-3f9a2c71e5"
"""A secret's value: no error message, repr or rendered pod may hold it."""

SECRETS = """
secrets:
  deploy_token: {from_env: DEPLOY_TOKEN}
  ssh_key: {from_file: keys/id}
steps:
  - name: deploy
    image: busybox
    secrets:
      - deploy_token
      - {source: ssh_key, target: SSH_KEY}
      - {source: ssh_key}                  # target: the same name
      - {secret: db-creds, key: password, target: DB_PASS}
    environment:
      MODE: fast
      API_KEY: {from_secret: deploy_token}
"""


def _secret_dir(tmp_path: Path, content: bytes = b"key-line-1\nkey-line-2\n") -> Path:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "id").write_bytes(content)
    return tmp_path


def test_secrets_come_from_the_environment_and_from_files(tmp_path: Path) -> None:
    spec = load_pipeline_text(
        SECRETS, base_dir=_secret_dir(tmp_path), environ={"DEPLOY_TOKEN": TOKEN}
    )
    assert {name: value.reveal() for name, value in spec.secret_values.items()} == {
        "deploy_token": TOKEN,
        # One trailing newline is the file's end, not the value's.
        "ssh_key": "key-line-1\nkey-line-2",
    }
    (step,) = spec.steps
    assert dict(step.secret_env) == {
        "deploy_token": "deploy_token",
        "SSH_KEY": "ssh_key",
        "ssh_key": "ssh_key",
        "API_KEY": "deploy_token",
        "DB_PASS": ExistingSecret("db-creds", "password"),
    }
    assert dict(step.env) == {"MODE": "fast"}
    assert TOKEN not in repr(spec)
    assert TOKEN not in repr(
        load_plan_text(SECRETS, base_dir=tmp_path, environ={"DEPLOY_TOKEN": TOKEN})
    )


def test_a_from_file_path_is_relative_to_the_pipeline_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = _secret_dir(tmp_path) / "ci.yaml"
    pipeline.write_text(SECRETS)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("DEPLOY_TOKEN", TOKEN)
    spec = load_plan_file(pipeline).spec
    assert spec.secret_values["ssh_key"].reveal() == "key-line-1\nkey-line-2"
    assert spec.secret_values["deploy_token"].reveal() == TOKEN


@pytest.mark.parametrize(
    ("content", "value"),
    [
        (b"abcd1234", "abcd1234"),
        (b"abcd1234\n", "abcd1234"),
        (b"abcd1234\r\n", "abcd1234"),
        (b"abcd1234\n\n", "abcd1234\n"),
        (b"  abcd1234 \n", "  abcd1234 "),
    ],
)
def test_one_trailing_newline_of_a_file_is_stripped(
    tmp_path: Path, content: bytes, value: str
) -> None:
    (tmp_path / "s").write_bytes(content)
    spec = load_pipeline_text(
        "secrets: {s: {from_file: s}}\nsteps: [{name: a, image: busybox, secrets: [s]}]",
        base_dir=tmp_path,
    )
    assert spec.secret_values["s"].reveal() == value


def test_a_literal_value_needs_allow_literal_secrets() -> None:
    text = (
        "allow_literal_secrets: true\n"
        f"secrets: {{t: {{value: '{TOKEN}'}}}}\n"
        "steps: [{name: a, image: busybox, secrets: [t]}]"
    )
    assert load_pipeline_text(text).secret_values["t"].reveal() == TOKEN


def test_registries_and_image_pull_secrets_are_read(tmp_path: Path) -> None:
    (tmp_path / "user").write_text("robot$ci\n")
    spec = load_pipeline_text(
        "image_pull_secrets: [corp-pull, team.pull]\n"
        "registries:\n"
        "  registry.example.com: {username: ci, password: {from_env: REG_TOKEN}}\n"
        "  localhost:5000: {username: {from_file: user}, password: {from_file: user}}\n"
        "steps: [{name: a, image: busybox}]",
        base_dir=tmp_path,
        environ={"REG_TOKEN": TOKEN},
    )
    assert spec.image_pull_secrets == ("corp-pull", "team.pull")
    assert set(spec.registries) == {"registry.example.com", "localhost:5000"}
    assert spec.registries["registry.example.com"].username == "ci"
    assert spec.registries["registry.example.com"].secret.reveal() == TOKEN
    assert spec.registries["localhost:5000"].username == "robot$ci"
    assert TOKEN not in repr(spec)


POLICY = """
tolerations: [{key: dedicated, operator: Equal, value: ci, effect: NoSchedule}]
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms: [{matchExpressions: [{key: disk, operator: In, values: [ssd]}]}]
runtime_class_name: gvisor
priority_class_name: ci-low
security_context: {runAsNonRoot: true, fsGroup: 2000}
dns_config: {nameservers: [10.0.0.10], options: [{name: ndots, value: "2"}]}
dns_policy: None
pod_overrides: {spec: {hostname: builder}}
steps:
  - name: a
    image: busybox
    security_context: {runAsUser: 1000, capabilities: {drop: [ALL]}}
  - {name: b, image: docker:27-dind, privileged: true}
"""


def test_the_pod_policy_fields_are_read_as_written() -> None:
    spec = load_pipeline_text(POLICY)
    assert spec.tolerations == [
        {"key": "dedicated", "operator": "Equal", "value": "ci", "effect": "NoSchedule"}
    ]
    assert spec.affinity is not None
    assert "nodeAffinity" in spec.affinity
    assert spec.runtime_class_name == "gvisor"
    assert spec.priority_class_name == "ci-low"
    assert spec.security_context == {"runAsNonRoot": True, "fsGroup": 2000}
    assert spec.dns_config == {
        "nameservers": ["10.0.0.10"],
        "options": [{"name": "ndots", "value": "2"}],
    }
    assert spec.dns_policy == "None"
    assert spec.pod_overrides == {"spec": {"hostname": "builder"}}
    a, b = spec.steps
    assert a.security_context == {"runAsUser": 1000, "capabilities": {"drop": ["ALL"]}}
    assert (a.privileged, b.privileged) == (False, True)


def test_without_secrets_or_policy_keys_the_spec_is_as_before() -> None:
    spec = load_pipeline_text("steps: [{name: a, image: busybox}]", environ={})
    assert dict(spec.secrets) == {}
    assert dict(spec.registries) == {}
    assert spec.image_pull_secrets == ()
    assert spec.tolerations is None
    assert spec.pod_overrides is None
    assert spec.steps[0].security_context is None
    assert not spec.steps[0].privileged


ENVIRON = {"DEPLOY_TOKEN": TOKEN, "EMPTY": ""}


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        # Never a value in the file, and never its value in the message.
        (f"secrets: {{t: {TOKEN}}}", "secrets.t", "is a string written in the pipeline file"),
        (f"secrets: {{t: {TOKEN}}}", "secrets.t", "allow_literal_secrets: true"),
        (f"secrets: {{t: {{value: {TOKEN}}}}}", "secrets.t.value", "allow_literal_secrets: true"),
        (
            f"allow_literal_secrets: true\nsecrets: {{t: {TOKEN}}}",
            "secrets.t",
            "give {from_env: VAR} or {from_file: path} instead ({value: ...}",
        ),
        ("allow_literal_secrets: yes please", "allow_literal_secrets", "must be true or false"),
        (
            "allow_literal_secrets: true\nsecrets: {t: {value: 1234}}",
            "secrets.t.value",
            "must be a non-empty quoted string, not a number",
        ),
        ("secrets: [t]", "secrets", "must be a mapping of name to {from_env: VAR}"),
        ("secrets: {t: }", "secrets.t", "missing"),
        ("secrets: {'a b': {from_env: X}}", "secrets", "'a b' is not a secret name"),
        ("secrets: {t: {from_envv: X}}", "secrets.t", "unknown key 'from_envv'"),
        (
            "secrets: {t: {from_env: X, from_file: y}}",
            "secrets.t",
            "exactly one of from_env, from_file, value",
        ),
        ("secrets: {t: {from_env: [X]}}", "secrets.t.from_env", "must be a variable's name"),
        # What the environment and the files hold is read last, named by secret.
        (
            "secrets: {t: {from_env: NOT_SET_ANYWHERE}}",
            "secrets.t.from_env",
            "the environment variable NOT_SET_ANYWHERE is not set",
        ),
        ("secrets: {t: {from_env: EMPTY}}", "secrets.t.from_env", "variable EMPTY is empty"),
        ("secrets: {t: {from_file: missing}}", "secrets.t.from_file", "missing ("),
        ("secrets: {t: {from_file: missing}}", "secrets.t.from_file", "no such file"),
        ("secrets: {t: {from_file: empty}}", "secrets.t.from_file", "is empty"),
        ("secrets: {t: {from_file: binary}}", "secrets.t.from_file", "not UTF-8 text"),
        ("secrets: {t: {from_file: .}}", "secrets.t.from_file", "is a directory"),
        (
            "secrets: {t: {from_file: binary/t}}",
            "secrets.t.from_file",
            "binary/t (",
        ),
        (
            "secrets: {t: {from_file: binary/t}}",
            "secrets.t.from_file",
            "cannot read: Not a directory",
        ),
        # Steps name declared secrets.
        (
            "steps+: [{name: b, image: busybox, secrets: [t]}]",
            "steps[1].secrets[0]",
            "no secret 't'",
        ),
        (
            "secrets: {deploy_token: {from_env: DEPLOY_TOKEN}}\n"
            "steps+: [{name: b, image: busybox, secrets: [deploy_tokn]}]",
            "steps[1].secrets[0]",
            "(did you mean 'deploy_token'?)",
        ),
        (
            "steps+: [{name: b, image: busybox, secrets: {T: t}}]",
            "steps[1].secrets",
            "must be a list",
        ),
        (
            "steps+: [{name: b, image: busybox, secrets: [{source: db-creds/password, "
            "target: P}]}]",
            "steps[1].secrets[0].source",
            "{secret: SECRET, key: KEY, target: VAR}",
        ),
        (
            "steps+: [{name: b, image: busybox, secrets: [{secret: db-creds, key: password}]}]",
            "steps[1].secrets[0].target",
            "must be a string",
        ),
        (
            "steps+: [{name: b, image: busybox, secrets: [{secret: Db, key: p, target: P}]}]",
            "steps[1].secrets[0].secret",
            "'Db' is not a Secret's name",
        ),
        (
            "steps+: [{name: b, image: busybox, secrets: [{sorce: t, target: P}]}]",
            "steps[1].secrets[0]",
            "unknown key 'sorce' (did you mean 'source'?)",
        ),
        (
            "secrets: {deploy_token: {from_env: DEPLOY_TOKEN}}\n"
            "steps+: [{name: b, image: busybox, secrets: [deploy_token, "
            "{source: deploy_token, target: deploy_token}]}]",
            "steps[1].secrets[1]",
            "deploy_token is given twice",
        ),
        (
            "secrets: {deploy_token: {from_env: DEPLOY_TOKEN}}\n"
            "steps+: [{name: b, image: busybox, environment: {deploy_token: x}, "
            "secrets: [deploy_token]}]",
            "steps[1].secrets[0]",
            "deploy_token is also set under environment",
        ),
        (
            "secrets: {deploy_token: {from_env: DEPLOY_TOKEN}}\n"
            "steps+: [{name: b, image: busybox, secrets: [deploy_token], "
            "environment: {deploy_token: {from_secret: deploy_token}}}]",
            "steps[1].environment['deploy_token']",
            "also given under secrets",
        ),
        (
            "steps+: [{name: b, image: busybox, env: {T: {from_secret: nope}}}]",
            "steps[1].env['T']",
            "no secret 'nope' under the top-level secrets (none declared)",
        ),
        (
            "secrets: {deploy_token: {from_env: DEPLOY_TOKEN}}\n"
            "steps+: [{name: b, image: busybox, secrets: ['BAD NAME']}]",
            "steps[1].secrets[0]",
            "no secret 'BAD NAME'",
        ),
        # Registries and pull secrets.
        ("image_pull_secrets: corp-pull", "image_pull_secrets", "must be a list of Secret names"),
        ("image_pull_secrets: [Corp_Pull]", "image_pull_secrets[0]", "is not a Secret's name"),
        ("registries: [a]", "registries", "must be a mapping of registry host"),
        (
            f"registries: {{r.io: {{username: u, password: {TOKEN}}}}}",
            "registries.r.io.password",
            "is a string written in the pipeline file",
        ),
        (
            "registries: {r.io: {password: {from_env: DEPLOY_TOKEN}}}",
            "registries.r.io.username",
            "must be a user name",
        ),
        ("registries: {r.io: {username: u}}", "registries.r.io.password", "missing"),
        (
            "registries: {r.io: {username: u, pasword: {from_env: DEPLOY_TOKEN}}}",
            "registries.r.io",
            "unknown key 'pasword' (did you mean 'password'?)",
        ),
        (
            "registries: {'https://r.io': {username: u, password: {from_env: DEPLOY_TOKEN}}}",
            "registries.https://r.io",
            "must be a registry host[:port]",
        ),
        (
            "registries: {r.io: {username: u, password: {from_env: NOT_SET_ANYWHERE}}}",
            "registries.r.io.password.from_env",
            "NOT_SET_ANYWHERE is not set",
        ),
        # The pod policy fields.
        ("tolerations: {key: a}", "tolerations", "must be a list of mappings"),
        ("affinity: [a]", "affinity", "must be a mapping"),
        ("runtime_class_name: [gvisor]", "runtime_class_name", "must be a non-empty string"),
        ("priority_class_name: 3", "priority_class_name", "must be a non-empty string"),
        ("security_context: true", "security_context", "must be a mapping"),
        ("dns_config: x", "dns_config", "must be a mapping"),
        ("dns_policy: {a: 1}", "dns_policy", "must be a non-empty string"),
        ("pod_overrides: [x]", "pod_overrides", "must be a mapping"),
        (
            "steps+: [{name: b, image: busybox, privileged: 1}]",
            "steps[1].privileged",
            "true or false",
        ),
        (
            "steps+: [{name: b, image: busybox, security_context: [x]}]",
            "steps[1].security_context",
            "must be a mapping",
        ),
    ],
)
def test_each_problem_of_secrets_and_policy_names_its_field(
    tmp_path: Path, text: str, field: str, words: str
) -> None:
    (tmp_path / "empty").write_bytes(b"\n")
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    if "steps+:" in text:
        head, _, more = text.partition("steps+: [")
        text = f"{head}steps: [{{name: a, image: busybox}}, {more}"
    else:
        text = f"{text}\nsteps: [{{name: a, image: busybox}}]"
    with pytest.raises(SpecError) as info:
        load_pipeline_text(text, base_dir=tmp_path, environ=ENVIRON)
    error = info.value
    assert error.field == field, error
    assert words in error.problem, error
    assert "\n" not in str(error)
    assert TOKEN not in str(error)


def test_a_file_too_large_for_a_secret_is_refused(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * (1024 * 1024 + 1))
    with pytest.raises(SpecError, match="larger than 1 MiB"):
        load_pipeline_text(
            "secrets: {s: {from_file: big}}\nsteps: [{name: a, image: busybox}]",
            base_dir=tmp_path,
        )


def test_an_unreadable_secret_file_names_the_secret_and_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "locked"
    secret.write_text(TOKEN)
    secret.chmod(0)
    try:
        if os.access(secret, os.R_OK):
            pytest.skip("running as root: every file is readable")
        with pytest.raises(SpecError) as info:
            load_pipeline_text(
                "secrets: {s: {from_file: locked}}\nsteps: [{name: a, image: busybox}]",
                base_dir=tmp_path,
            )
    finally:
        secret.chmod(0o600)
    assert info.value.field == "secrets.s.from_file"
    assert "locked" in info.value.problem
    assert "cannot read: Permission denied" in info.value.problem


def test_mistakes_in_the_file_are_said_before_a_missing_variable() -> None:
    # The variable is missing too, but a typo is what the author can fix first.
    error = problem(
        "secrets: {t: {from_env: NOT_SET_ANYWHERE}}\nsteps: [{name: a, image: busybox, "
        "comands: [x]}]"
    )
    assert error.field == "steps[0]"
