"""Secret values: kept out of reprs and pod specs, referenced by secretKeyRef, masked."""

from __future__ import annotations

import pytest

from buildruntime import BuildSpec, SpecError, StepSpec
from buildruntime.secrets import MIN_MASKED, ExistingSecret, Masker, SecretValue
from buildruntime.spec import render_pod


def test_a_secret_value_never_shows_itself() -> None:
    value = SecretValue("s3cr3t-value")
    assert "s3cr3t" not in repr(value)
    assert "s3cr3t" not in str(value)
    assert "s3cr3t" not in f"{value}"
    assert value.reveal() == "s3cr3t-value"
    spec = BuildSpec(
        build_id="b", steps=[StepSpec(name="s", image="busybox")], secrets={"t": "s3cr3t-value"}
    )
    assert "s3cr3t" not in repr(spec)


def test_steps_get_secrets_through_secret_key_refs() -> None:
    spec = BuildSpec(
        build_id="b",
        steps=[
            StepSpec(
                name="s",
                image="busybox",
                commands=["true"],
                secrets={"TOKEN": "token", "DB": ExistingSecret("db-creds", "password")},
            ),
            StepSpec(name="t", image="busybox", secrets=["token"]),
        ],
        secrets={"token": "s3cr3t-value"},
    )
    pod = render_pod(spec, namespace="ci", pause_image="registry.k8s.io/pause:3.10")
    assert "s3cr3t" not in str(pod)
    s, t = pod["spec"]["containers"]
    assert s["env"][1:] == [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "b-secrets", "key": "token"}}},
        {"name": "DB", "valueFrom": {"secretKeyRef": {"name": "db-creds", "key": "password"}}},
    ]
    assert t["env"][1:] == [
        {"name": "token", "valueFrom": {"secretKeyRef": {"name": "b-secrets", "key": "token"}}}
    ]


@pytest.mark.parametrize(
    ("build", "field"),
    [
        ({"secrets": {"bad key!": "x"}}, "secrets['bad key!']"),
        ({"secrets": {"k": 3}}, "secrets['k']"),
        (
            {"steps": [StepSpec(name="s", image="busybox", secrets=["missing"])]},
            "steps[s].secrets['missing']",
        ),
    ],
)
def test_bad_secrets_name_the_field(build: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError) as info:
        BuildSpec(**{"build_id": "b", "steps": [StepSpec(name="s", image="busybox")], **build})  # type: ignore[arg-type]
    assert info.value.field == field


def test_a_step_cannot_set_a_secret_twice() -> None:
    with pytest.raises(SpecError, match="also set in env"):
        StepSpec(name="s", image="busybox", env={"TOKEN": "x"}, secrets={"TOKEN": "token"})


def test_masking_covers_each_line_and_the_longest_value_first() -> None:
    masker = Masker(
        [
            SecretValue("abcd"),
            SecretValue("abcdefgh"),
            SecretValue("line-one\nline-two"),
            SecretValue("xyz"),
        ]
    )
    assert masker.lines([b"abcdefgh and abcd"]) == [b"******** and ********"]
    assert masker.lines([b"line-two then line-one"]) == [b"******** then ********"]
    # Shorter than MIN_MASKED: not masked (it would blank unrelated text everywhere).
    assert len("xyz") < MIN_MASKED
    assert masker.lines([b"xyz"]) == [b"xyz"]
    assert masker.text("token abcd") == "token ********"
    assert not Masker([SecretValue("ab")])


def test_domain_event_messages_are_masked() -> None:
    import msgspec

    from buildruntime.build_view import BuildView
    from buildruntime.informer.snapshots import EventSnapshot

    masker = Masker([SecretValue("s3cr3t-value")])
    view = BuildView("b", ["s"], mask=masker.text)
    event = msgspec.convert(
        {
            "metadata": {"name": "e1", "uid": "e1", "resourceVersion": "1"},
            "involvedObject": {"kind": "Pod", "name": "b", "fieldPath": "spec.containers{s}"},
            "type": "Warning",
            "reason": "Failed",
            "message": "Error: bad config s3cr3t-value",
            "count": 1,
        },
        EventSnapshot,
    )
    view.event("s", event, first=True, about_step=True)
    (emitted,) = [e for e in view.build_events.items_from(0)[0] if e.kind == "warning"]
    assert emitted.message == "Error: bad config ********"
