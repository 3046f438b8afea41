"""The command line as a user runs it, against the suite's target.

``buildruntime run`` runs as a subprocess: on FakeCluster with ``--simulate`` (its own
simulated cluster, in that process), on the real cluster with the suite's kubeconfig,
namespace and pause image. The tests check what the user sees (exact log lines, the
summary, the exit status) and what is left behind after a SIGTERM (nothing: no pod on
the cluster, no step process on this machine).
"""

from __future__ import annotations

import os
import random
import re
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from anyio.abc import ByteReceiveStream, Process

from buildruntime.pipeline import load_pipeline_file

from .conftest import BUSYBOX, LOCAL_PAUSE_IMAGE, Target

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
BOUND = 120
"""Seconds one CLI run may take on either target (a pull of busybox included) before the
test fails instead of hanging."""


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _where(target: Target) -> list[str]:
    """The options that point ``run`` at the suite's target."""
    if target.kind == "fake":
        return ["--simulate"]
    return [
        "--kubeconfig",
        os.environ["KUBECONFIG"],
        "--namespace",
        target.namespace,
        "--pause-image",
        LOCAL_PAUSE_IMAGE,
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NO_COLOR", None)
    env.pop("BUILDRUNTIME_PAUSE_IMAGE", None)  # the tests pass --pause-image themselves
    return env


@dataclass
class Run:
    """A running ``buildruntime run`` and what it wrote so far."""

    process: Process
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    status: int | None = None

    @property
    def out(self) -> str:
        return self.stdout.decode()

    @property
    def err(self) -> str:
        return self.stderr.decode()

    async def output(self, text: str) -> None:
        """Wait until stdout holds ``text`` (bound it with ``fail_after``)."""
        while text.encode() not in self.stdout:
            assert self.status is None, f"exited {self.status} first:\n{self.out}{self.err}"
            await anyio.sleep(0.05)


@asynccontextmanager
async def _cli(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[Run]:
    """``buildruntime`` with ``args``; ``env``: variables to add to its environment."""
    process = await anyio.open_process(
        [sys.executable, "-m", "buildruntime", *args], cwd=ROOT, env={**_env(), **(env or {})}
    )
    run = Run(process)

    async def collect(stream: ByteReceiveStream | None, into: bytearray) -> None:
        assert stream is not None
        async for chunk in stream:
            into.extend(chunk)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, process.stdout, run.stdout)
            tg.start_soon(collect, process.stderr, run.stderr)

            async def wait() -> None:
                run.status = await process.wait()

            tg.start_soon(wait)
            yield run
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.CancelScope(shield=True):
            await process.aclose()


async def _run_to_end(*args: str, env: dict[str, str] | None = None) -> Run:
    with anyio.fail_after(BOUND):
        async with _cli(*args, env=env) as run:
            pass
    return run


def _logs(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("[")]


def _summary(out: str) -> dict[str, list[str]]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("STEP "))
    return {cells[0]: cells for cells in (re.split(r"\s{2,}", line) for line in lines[start + 1 :])}


async def test_a_passing_pipeline(target: Target, tmp_path: Path) -> None:
    pipeline = tmp_path / "passing.yaml"
    pipeline.write_text(
        f"build_id: {_id('cli-ok')}\nsteps:\n"
        f"  - {{name: greet, image: {BUSYBOX}, commands: ['echo hello', 'echo done']}}\n"
        f"  - {{name: count, image: {BUSYBOX}, commands: ['seq 1 3'], env: {{N: 3}}}}\n"
    )
    run = await _run_to_end("run", str(pipeline), *_where(target))
    assert run.status == 0, run.err
    assert _logs(run.out) == [
        "[greet] hello",
        "[greet] done",
        "[count] 1",
        "[count] 2",
        "[count] 3",
    ]
    rows = _summary(run.out)
    assert [r[:3] for r in rows.values()] == [["greet", "ok", "0"], ["count", "ok", "0"]]
    assert all(re.fullmatch(r"\d+(\.\d+)?s|<\d+s", r[3]) for r in rows.values()), rows
    assert "Traceback" not in run.err
    assert "error:" not in run.err


async def test_a_failing_pipeline_exits_with_the_steps_code(target: Target, tmp_path: Path) -> None:
    pipeline = tmp_path / "failing.yaml"
    pipeline.write_text(
        f"build_id: {_id('cli-fail')}\nsteps:\n"
        f"  - {{name: build, image: {BUSYBOX}, commands: ['echo building']}}\n"
        f"  - {{name: test, image: {BUSYBOX}, commands: ['echo 1 test failed', 'exit 3']}}\n"
        f"  - {{name: publish, image: {BUSYBOX}, commands: ['echo never published']}}\n"
    )
    run = await _run_to_end("run", str(pipeline), *_where(target))
    assert run.status == 3, run.err
    assert _logs(run.out) == ["[build] building", "[test] 1 test failed"]
    rows = _summary(run.out)
    assert rows["build"][:3] == ["build", "ok", "0"]
    assert rows["test"][:3] == ["test", "failed", "3"]
    assert rows["test"][5] == "APP_ERROR: Error"
    assert rows["publish"] == ["publish", "skipped", "-", "-", "-"]
    assert "[test] failed: exit code 3 (APP_ERROR: Error)" in run.err.splitlines()
    assert "Traceback" not in run.err


async def test_the_summary_shows_each_step_s_run_time_and_overhead(
    target: Target, tmp_path: Path
) -> None:
    # A step shorter than its status takes to reach the watch is first seen ended: its
    # run time is then the kubelet's (whole seconds), never the instant the tail took
    # (on the local cluster, the kubelet's 1 s status relist makes that the usual case
    # for a step under a second).
    pipeline = tmp_path / "timed.yaml"
    pipeline.write_text(
        f"build_id: {_id('cli-timed')}\nsteps:\n"
        f"  - {{name: nap, image: {BUSYBOX}, commands: ['sleep 0.6', 'echo woke']}}\n"
        f"  - {{name: rest, image: {BUSYBOX}, commands: ['sleep 2.5', 'echo rested']}}\n"
    )
    run = await _run_to_end("run", str(pipeline), *_where(target))
    assert run.status == 0, run.err
    rows = _summary(run.out)
    header = next(line for line in run.out.splitlines() if line.startswith("STEP "))
    assert header.split() == ["STEP", "RESULT", "EXIT", "DURATION", "OVERHEAD", "FAILURE"]
    for name, least in (("nap", 0.6), ("rest", 2.5)):
        duration, overhead = rows[name][3], rows[name][4]
        assert re.fullmatch(r"\d+\.\d+s", overhead), rows[name]
        measured = re.fullmatch(r"(\d+\.\d+)s", duration)
        if measured:
            # Seen running: from there to its end, both seen through the watch. With
            # the overhead it spans the patch to the end, which holds the whole run.
            assert float(measured.group(1)) + float(overhead[:-1]) >= least, rows[name]
        else:
            bound = re.fullmatch(r"<(\d+)s", duration)
            assert bound is not None, rows[name]
            assert int(bound.group(1)) >= least, rows[name]


async def test_sigterm_removes_the_build(target: Target, tmp_path: Path) -> None:
    pidfile = tmp_path / "step.pid"
    # On FakeCluster the step runs here and says which process it is; in a container
    # its pid means nothing here, and the pod is what must go.
    record = f"echo $$ > {pidfile}" if target.kind == "fake" else "true"
    pipeline = tmp_path / "slow.yaml"
    pipeline.write_text(
        f"build_id: {_id('cli-term')}\nsteps:\n"
        f"  - {{name: wait, image: {BUSYBOX}, commands: ['{record}', 'echo started', "
        "'sleep 300']}\n"
        f"  - {{name: after, image: {BUSYBOX}, commands: ['echo never']}}\n"
    )
    pod_name = load_pipeline_file(pipeline).pod_name
    with anyio.fail_after(BOUND):
        async with _cli("run", str(pipeline), *_where(target)) as run:
            await run.output("[wait] started\n")
            if target.kind == "cluster":
                assert await target.read_pod(pod_name) is not None
            run.process.send_signal(signal.SIGTERM)
            terminated = time.monotonic()
    assert run.status == 143, run.err
    # Removal waits for the delete to be observed: bounded by the pod's grace period.
    assert time.monotonic() - terminated < 30
    assert "interrupted by SIGTERM" in run.err
    assert "Traceback" not in run.err
    assert re.search(r"^wait\s+interrupted", run.out, re.MULTILINE), run.out
    assert re.search(r"^after\s+skipped", run.out, re.MULTILINE), run.out
    assert "[after]" not in run.out
    if target.kind == "fake":
        step_pid = int(await anyio.Path(pidfile).read_text())
        assert not await anyio.Path(f"/proc/{step_pid}").exists()
    else:
        assert await target.read_pod(pod_name) is None


def _table(out: str) -> dict[str, dict[str, str]]:
    """The summary's rows by step name, each cell under its column's header (empty
    cells stay empty)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("STEP "))
    header = lines[start]
    names = re.split(r"\s{2,}", header.strip())
    starts = [header.index(name) for name in names]
    ends = [*starts[1:], None]
    return {
        row["STEP"]: row
        for row in (
            {name: line[b:e].strip() for name, b, e in zip(names, starts, ends, strict=True)}
            for line in lines[start + 1 :]
        )
    }


async def test_an_ignored_failure_and_a_notification_after_a_failure(
    target: Target, tmp_path: Path
) -> None:
    pipeline = tmp_path / "rules.yaml"
    pipeline.write_text(
        f"build_id: {_id('cli-rules')}\nsteps:\n"
        f"  - {{name: lint, image: {BUSYBOX}, failure: ignore, "
        "commands: ['echo 2 warnings', 'exit 4']}\n"
        f"  - {{name: test, image: {BUSYBOX}, environment: {{N: 1}}, "
        "commands: ['echo $N test failed', 'exit 3']}\n"
        f"  - {{name: publish, image: {BUSYBOX}, commands: ['echo never published']}}\n"
        f"  - {{name: notify, image: {BUSYBOX}, when: {{status: failure}}, "
        "commands: ['echo telling the team']}\n"
        f"  - {{name: cleanup, image: {BUSYBOX}, when: {{status: [success, failure]}}, "
        "commands: ['echo cleaned up']}\n"
    )
    run = await _run_to_end("run", str(pipeline), *_where(target))
    # lint's 4 is ignored: the build's status is test's 3.
    assert run.status == 3, run.err
    assert _logs(run.out) == [
        "[lint] 2 warnings",
        "[test] 1 test failed",
        "[notify] telling the team",
        "[cleanup] cleaned up",
    ]
    rows = _table(run.out)
    assert {name: (row["RESULT"], row["EXIT"]) for name, row in rows.items()} == {
        "lint": ("failed (ignored)", "4"),
        "test": ("failed", "3"),
        "publish": ("skipped", "-"),
        "notify": ("ok", "0"),
        "cleanup": ("ok", "0"),
    }
    assert "[lint] failure ignored (failure: ignore)" in run.err.splitlines()
    assert "Traceback" not in run.err


async def test_a_notification_is_skipped_when_nothing_failed(
    target: Target, tmp_path: Path
) -> None:
    pipeline = tmp_path / "quiet.yaml"
    pipeline.write_text(
        f"build_id: {_id('cli-quiet')}\nsteps:\n"
        f"  - {{name: lint, image: {BUSYBOX}, failure: ignore, commands: ['exit 4']}}\n"
        f"  - {{name: test, image: {BUSYBOX}, commands: ['echo passed']}}\n"
        f"  - {{name: notify, image: {BUSYBOX}, when: {{status: failure}}, "
        "commands: ['echo telling the team']}\n"
    )
    run = await _run_to_end("run", str(pipeline), *_where(target))
    assert run.status == 0, run.err
    assert _logs(run.out) == ["[test] passed"]
    rows = _table(run.out)
    assert [rows[n]["RESULT"] for n in ("lint", "test", "notify")] == [
        "failed (ignored)",
        "ok",
        "skipped",
    ]


async def test_depends_on_runs_two_steps_at_the_same_time(target: Target, tmp_path: Path) -> None:
    pipeline = tmp_path / "dag.yaml"
    pipeline.write_text(
        f"build_id: {_id('cli-dag')}\nsteps:\n"
        f"  - {{name: build, image: {BUSYBOX}, commands: ['echo built']}}\n"
        f"  - {{name: left, image: {BUSYBOX}, depends_on: [build], "
        "commands: ['echo left one', 'sleep 4', 'echo left two']}\n"
        f"  - {{name: right, image: {BUSYBOX}, depends_on: [build], "
        "commands: ['echo right one', 'sleep 4', 'echo right two']}\n"
        f"  - {{name: join, image: {BUSYBOX}, depends_on: [left, right], "
        "commands: ['echo joined']}\n"
    )
    run = await _run_to_end("run", str(pipeline), *_where(target))
    assert run.status == 0, run.err
    lines = _logs(run.out)
    assert lines[0] == "[build] built"
    assert lines[-1] == "[join] joined"
    # Interleaved, under their own prefixes: both first lines come before either second
    # one, which each step prints 4 seconds after its first.
    assert sorted(lines[1:3]) == ["[left] left one", "[right] right one"]
    assert sorted(lines[3:5]) == ["[left] left two", "[right] right two"]
    assert len(lines) == 6
    rows = _table(run.out)
    assert {name: (row["RESULT"], row["PARALLEL WITH"]) for name, row in rows.items()} == {
        "build": ("ok", ""),
        "left": ("ok", "right"),
        "right": ("ok", "left"),
        "join": ("ok", ""),
    }
    assert "Traceback" not in run.err


async def test_the_example_pipeline(target: Target, tmp_path: Path) -> None:
    # examples/pipeline.yaml as is, with a build id of its own on a shared cluster.
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        f"build_id: {_id('cli-example')}\n" + (ROOT / "examples/pipeline.yaml").read_text()
    )
    run = await _run_to_end("run", str(pipeline), *_where(target))
    assert run.status == 0, run.err
    rows = _table(run.out)
    assert {name: row["RESULT"] for name, row in rows.items()} == {
        "build": "ok",
        "lint": "failed (ignored)",
        "test": "ok",
        "publish": "ok",
        "notify": "skipped",
        "cleanup": "ok",
    }
    assert "[publish] publishing example" in _logs(run.out)


APP_LOGS = {
    "web": ["serving public/ on port 8088"],
    "checkout": ["checked out src/index.html.in and src/build.sh"],
    "build": ["index.html", "VERSION", "built app 1.4.2"],
    "test-page": ["Hello from app 1.4.2", "page ok"],
    "test-archive": ["archive holds version 1.4.2"],
    "e2e": ["staging did not answer in time"],
}
"""examples/app.yaml's log lines by step: the same on both targets."""


def _by_step(out: str) -> dict[str, list[str]]:
    """Each step's log lines, in order: steps that run at the same time interleave."""
    lines: dict[str, list[str]] = {}
    for line in _logs(out):
        name, _, text = line.partition("] ")
        lines.setdefault(name[1:], []).append(text)
    return lines


async def test_the_app_example_with_its_service(target: Target, tmp_path: Path) -> None:
    # examples/app.yaml as is, with a build id of its own on a shared cluster.
    pipeline = tmp_path / "app.yaml"
    build_id = _id("cli-app")
    pipeline.write_text(f"build_id: {build_id}\n" + (ROOT / "examples/app.yaml").read_text())
    run = await _run_to_end("run", str(pipeline), *_where(target))
    assert run.status == 0, run.err
    assert _by_step(run.out) == APP_LOGS
    # The service is up before the first step starts.
    assert _logs(run.out)[:2] == [
        "[web] serving public/ on port 8088",
        "[checkout] checked out src/index.html.in and src/build.sh",
    ]
    rows = _table(run.out)
    assert {name: (row["RESULT"], row["EXIT"]) for name, row in rows.items()} == {
        "web": ("stopped", "-"),
        "checkout": ("ok", "0"),
        "build": ("ok", "0"),
        "test-page": ("ok", "0"),
        "test-archive": ("ok", "0"),
        "e2e": ("failed (ignored)", "1"),
        "notify": ("skipped", "-"),
    }
    assert "test-archive" in rows["test-page"]["PARALLEL WITH"]
    assert run.err.splitlines() == [
        "[e2e] failed: exit code 1 (APP_ERROR: Error)",
        "[e2e] failure ignored (failure: ignore)",
    ]
    if target.kind == "cluster":
        # Removing the build stopped the service with it.
        assert await target.read_pod(build_id) is None


async def test_a_service_that_dies_before_it_is_ready_fails_the_run(
    target: Target, tmp_path: Path
) -> None:
    build_id = _id("cli-svc-dies")
    pipeline = tmp_path / "dies.yaml"
    pipeline.write_text(
        f"build_id: {build_id}\n"
        "services:\n"
        f"  - name: db\n    image: {BUSYBOX}\n    ports: [5432]\n"
        # Both lines on stderr: a container's stdout and stderr lines interleave in
        # whichever order the pipes deliver them.
        "    commands: ['echo starting >&2', 'echo cannot open data directory >&2', "
        "'exit 3']\n"
        "steps:\n"
        f"  - {{name: test, image: {BUSYBOX}, commands: ['echo never']}}\n"
        f"  - {{name: notify, image: {BUSYBOX}, when: {{status: failure}}, "
        "commands: ['echo db never came up']}\n"
    )
    run = await _run_to_end("run", str(pipeline), *_where(target))
    assert run.status == 1, run.err
    assert run.err.splitlines() == [
        f"error: build {build_id}, step db: service db exited with code 3 before port 5432 "
        "accepted connections: last lines: starting | cannot open data directory (Error)"
    ]
    assert _logs(run.out) == [
        "[db] starting",
        "[db] cannot open data directory",
        "[notify] db never came up",
    ]
    rows = _table(run.out)
    assert {name: (row["RESULT"], row["EXIT"]) for name, row in rows.items()} == {
        "db": ("failed", "3"),
        "test": ("skipped", "-"),
        "notify": ("ok", "0"),
    }


async def test_a_detached_step_is_reached_by_name_on_a_cluster(
    target: Target, tmp_path: Path
) -> None:
    # On a cluster, hostAliases make the service's name stand for localhost; the
    # simulation's steps share the host's resolver, where only localhost works.
    host = "web" if target.kind == "cluster" else "localhost"
    port = random.randrange(20_000, 40_000)
    pipeline = tmp_path / "detached.yaml"
    pipeline.write_text(
        f"build_id: {_id('cli-detach')}\n"
        "steps:\n"
        f"  - {{name: page, image: {BUSYBOX}, commands: ['mkdir -p www', "
        "'echo served > www/index.html']}\n"
        f"  - {{name: web, image: {BUSYBOX}, detach: true, ports: [{port}], "
        f"commands: ['exec busybox httpd -f -p {port} -h www']}}\n"
        f"  - {{name: fetch, image: {BUSYBOX}, "
        f"commands: ['busybox wget -q -O - http://{host}:{port}/']}}\n"
    )
    run = await _run_to_end("run", str(pipeline), *_where(target))
    assert run.status == 0, run.err
    assert _logs(run.out) == ["[fetch] served"]
    rows = _table(run.out)
    assert [rows[n]["RESULT"] for n in ("page", "web", "fetch")] == ["ok", "stopped", "ok"]


async def test_a_named_volume_and_the_workspace_path(target: Target, tmp_path: Path) -> None:
    # The mount path reaches the commands through the environment: the simulation's
    # steps see the host's own /scratch, and get the volume's place for a value that is
    # exactly a mount path. Both steps mount it at one path: the simulation makes an
    # emptyDir a directory at its mount path, not one directory wherever it is mounted.
    pipeline = tmp_path / "volumes.yaml"
    pipeline.write_text(
        f"build_id: {_id('cli-vol')}\n"
        "workspace: /src\n"
        "volumes:\n  scratch: {emptyDir: {}}\n"
        "steps:\n"
        f"  - {{name: write, image: {BUSYBOX}, volumes: ['scratch:/scratch'], "
        "environment: {AT: /scratch}, "
        "commands: ['echo kept > \"$AT/note\"', 'echo in-workspace > here']}\n"
        f"  - {{name: read, image: {BUSYBOX}, volumes: ['scratch:/scratch'], "
        "environment: {AT: /scratch}, "
        "commands: ['cat \"$AT/note\"', 'cat \"$CI_WORKSPACE/here\"', "
        "'echo \"${CI_WORKSPACE##*/}\"']}\n"
    )
    run = await _run_to_end("run", str(pipeline), *_where(target))
    assert run.status == 0, run.err
    assert _logs(run.out) == ["[read] kept", "[read] in-workspace", "[read] src"]


TOKEN = "tok-3f9a2c71e5"
KEY_LINES = ("first line of the key", "second-line-9931")


async def test_secrets_from_the_environment_and_a_file(target: Target, tmp_path: Path) -> None:
    """The steps get the values; stdout shows ********; no byte of either value is in
    anything the command wrote; the build's Secret goes with the build."""
    build_id = _id("cli-secrets")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "deploy.key").write_text("\n".join(KEY_LINES) + "\n")
    pipeline = tmp_path / "secrets.yaml"
    pipeline.write_text(
        f"build_id: {build_id}\n"
        "secrets:\n"
        "  token: {from_env: BR_TEST_TOKEN}\n"
        "  key: {from_file: keys/deploy.key}\n"
        "steps:\n"
        f"  - name: deploy\n    image: {BUSYBOX}\n"
        "    secrets: [token, {source: key, target: KEY}]\n"
        "    commands:\n"
        '      - echo "token=$token"\n'
        '      - printf "%s\\n" "$KEY"\n'
        # The step itself checks what it got: lengths are no secret.
        '      - printf "%s" "$token" | wc -c\n'
        '      - printf "%s" "$KEY" | wc -c\n'
        f"  - name: notify\n    image: {BUSYBOX}\n"
        "    environment: {AUTH: {from_secret: token}}\n"
        "    commands: ['echo \"Bearer $AUTH\" >&2']\n"
    )
    run = await _run_to_end("run", str(pipeline), *_where(target), env={"BR_TEST_TOKEN": TOKEN})
    assert run.status == 0, run.err
    key_length = len("\n".join(KEY_LINES))
    assert _logs(run.out) == [
        "[deploy] token=********",
        "[deploy] ********",
        "[deploy] ********",
        f"[deploy] {len(TOKEN)}",
        f"[deploy] {key_length}",
        "[notify] Bearer ********",
    ]
    everything = run.out + run.err
    assert [v for v in (TOKEN, *KEY_LINES) if v in everything] == []
    rows = _table(run.out)
    assert {name: row["RESULT"] for name, row in rows.items()} == {"deploy": "ok", "notify": "ok"}
    assert "error:" not in run.err
    if target.kind == "cluster":
        # Removing the build removed its Secret. (--simulate's cluster lives and dies in
        # the command's own process: nothing of it is left to look at.)
        assert await target.read_secret(f"{build_id}-secrets") is None


async def test_a_step_that_echoes_its_secret_and_fails(target: Target, tmp_path: Path) -> None:
    """On a cluster the kubelet copies the failed step's last lines, value and all, into
    its termination message (FallbackToLogsOnError): nothing the command writes shows
    it."""
    pipeline = tmp_path / "leaky.yaml"
    pipeline.write_text(
        f"build_id: {_id('cli-leaky')}\n"
        "secrets: {token: {from_env: BR_TEST_TOKEN}}\n"
        "steps:\n"
        f"  - name: leaky\n    image: {BUSYBOX}\n    secrets: [token]\n"
        "    commands: ['echo \"about to fail with $token\"', 'echo \"$token\" >&2', 'exit 3']\n"
        f"  - {{name: after, image: {BUSYBOX}, commands: ['echo never']}}\n"
    )
    run = await _run_to_end("run", str(pipeline), *_where(target), env={"BR_TEST_TOKEN": TOKEN})
    assert run.status == 3, run.err
    assert TOKEN not in run.out + run.err
    assert sorted(_logs(run.out)) == ["[leaky] ********", "[leaky] about to fail with ********"]
    rows = _table(run.out)
    assert (rows["leaky"]["RESULT"], rows["leaky"]["EXIT"]) == ("failed", "3")
    assert rows["after"]["RESULT"] == "skipped"
    assert run.err.splitlines() == ["[leaky] failed: exit code 3 (APP_ERROR: Error)"]
