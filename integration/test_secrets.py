"""Secrets that never leak: values only in the build's Secret (owned by its pod) and in
memory, masked in every line and message, gone with the build whoever removes it."""

from __future__ import annotations

import base64
import json
import uuid

import anyio
import pytest

from buildruntime import BuildSpec, StepSpec
from buildruntime.secrets import ExistingSecret

from .conftest import BUSYBOX, Target

pytestmark = pytest.mark.anyio

TOKEN = "tok-3f9a2c71e5"
PASSWORD = "first line of it\nsecond-line-9931"


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def test_a_secret_reaches_its_step_and_nothing_else_shows_it(target: Target) -> None:
    spec = BuildSpec(
        build_id=_id("secret"),
        steps=[
            StepSpec(
                name="deploy",
                image=BUSYBOX,
                commands=[
                    'echo "token=$TOKEN"',
                    'echo "$DB_PASSWORD"',
                    'printf %s "$TOKEN" | wc -c',
                ],
                secrets={"TOKEN": "deploy_token", "DB_PASSWORD": "db_password"},
            ),
            StepSpec(
                name="leaky",
                image=BUSYBOX,
                commands=['echo "about to fail with $TOKEN"', "exit 2"],
                secrets={"TOKEN": "deploy_token"},
            ),
        ],
        secrets={"deploy_token": TOKEN, "db_password": PASSWORD},
    )
    assert TOKEN not in repr(spec)
    secret_name = f"{spec.pod_name}-secrets"
    async with target.runtime() as rt:
        build = await rt.setup_build(spec)
        assert TOKEN not in json.dumps(build.pod_manifest)
        await rt.assemble_build(build)
        try:
            pod = await target.read_pod(build.pod_name)
            assert pod is not None
            assert TOKEN not in json.dumps(pod)
            assert "second-line-9931" not in json.dumps(pod)
            stored = await target.read_secret(secret_name)
            assert stored is not None
            owners = stored["metadata"]["ownerReferences"]
            assert [(o["kind"], o["uid"]) for o in owners] == [("Pod", pod["metadata"]["uid"])]
            assert base64.b64decode(stored["data"]["deploy_token"]).decode() == TOKEN
            with anyio.fail_after(60):
                await rt.run_container(build, "deploy")
                lines = [line async for line in rt.tail_container(build, "deploy")]
                deployed = await rt.wait_container(build, "deploy")
                await rt.run_container(build, "leaky")
                leaked = [line async for line in rt.tail_container(build, "leaky")]
                failed = await rt.wait_container(build, "leaky")
            # The step saw the values (its own check passed); no reader sees them.
            assert deployed.exit_code == 0
            assert lines == [b"token=********", b"********", b"********", b"14"]
            assert leaked == [b"about to fail with ********"]
            assert failed.exit_code == 2
            assert TOKEN not in (failed.message or "")
            inspected = await rt.inspect_container(build, "leaky")
            assert TOKEN not in (inspected.message or "")
        finally:
            await rt.remove_build(build)
    assert await target.read_secret(secret_name) is None


async def test_the_secret_goes_with_its_pod_whoever_deletes_it(target: Target) -> None:
    """A worker that died leaves its pod; once that is deleted (by hand, or by a worker's
    reaper), Kubernetes' garbage collector removes the Secret the pod owns."""
    spec = BuildSpec(
        build_id=_id("orphan"),
        steps=[StepSpec(name="s", image=BUSYBOX, commands=["true"], secrets=["token"])],
        secrets={"token": TOKEN},
    )
    secret_name = f"{spec.pod_name}-secrets"
    async with target.runtime() as rt:
        build = await rt.setup_build(spec)
        await rt.assemble_build(build)
        assert await target.read_secret(secret_name) is not None
        await target.delete_pod_from_outside(build.pod_name)
        with anyio.fail_after(60):
            await target.pod_gone(build.pod_name)
            while await target.read_secret(secret_name) is not None:
                await anyio.sleep(0.2)
        await rt.remove_build(build)


async def test_an_existing_secret_is_referenced_by_name_and_key(target: Target) -> None:
    existing = _id("creds")
    await target.cluster.create_secret(
        target.namespace,
        {
            "metadata": {"name": existing},
            "data": {"password": base64.b64encode(b"hunter22").decode()},
        },
    )
    try:
        spec = BuildSpec(
            build_id=_id("existing"),
            steps=[
                StepSpec(
                    name="s",
                    image=BUSYBOX,
                    commands=['echo "$PASS"'],
                    secrets={"PASS": ExistingSecret(existing, "password")},
                )
            ],
        )
        async with target.runtime() as rt:
            build = await rt.setup_build(spec)
            await rt.assemble_build(build)
            try:
                with anyio.fail_after(60):
                    await rt.run_container(build, "s")
                    lines = [line async for line in rt.tail_container(build, "s")]
            finally:
                await rt.remove_build(build)
        # Values of Secrets the build did not declare are unknown to the runtime.
        assert lines == [b"hunter22"]
        assert not [r for r in target.requests if r.resource == "secrets" and r.verb != "create"]
    finally:
        await target.cluster.delete_secret(target.namespace, existing)
