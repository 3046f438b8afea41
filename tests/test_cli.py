"""The command line, in process (``cli.main``) and once as ``python -m buildruntime``."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from buildruntime import Failure, Runtime, ServiceError, StepResult, cli
from buildruntime.cli.console import Console
from buildruntime.pipeline import load_pipeline_file, load_plan_text
from buildruntime.testing import FakeCluster

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = cli.main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def summary(out: str) -> dict[str, list[str]]:
    """The summary table's rows by step name."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("STEP "))
    return {cells[0]: cells for cells in (re.split(r"\s{2,}", line) for line in lines[start + 1 :])}


def logs(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("[")]


def test_hello(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "run", str(EXAMPLES / "hello.yaml"), "--simulate")
    assert status == 0, err
    assert logs(out) == [
        "[greet] hello",
        "[greet] done",
        "[count] line 1",
        "[count] line 2",
        "[count] line 3",
    ]
    rows = summary(out)
    assert [r[:3] for r in rows.values()] == [["greet", "ok", "0"], ["count", "ok", "0"]]
    assert all(re.fullmatch(r"\d+\.\d+s|<\d+s", r[3]) for r in rows.values())
    assert all(re.fullmatch(r"\d+\.\d+s", r[4]) for r in rows.values())  # the overhead
    assert "\x1b[" not in out  # no colour when stdout is not a terminal
    assert "Traceback" not in err


def test_failing_step_sets_the_exit_status_and_skips_the_rest(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, err = run(capsys, "run", str(EXAMPLES / "failing.yaml"), "--simulate", "-n", "ci")
    assert status == 3
    assert logs(out) == ["[build] building", "[test] 1 test failed"]
    rows = summary(out)
    assert rows["build"][:3] == ["build", "ok", "0"]
    assert rows["test"][:3] == ["test", "failed", "3"]
    assert rows["test"][5] == "APP_ERROR: Error"
    assert rows["publish"] == ["publish", "skipped", "-", "-", "-"]
    assert "never published" not in out
    assert "[test] failed: exit code 3" in err


def test_missing_image_exits_1_with_the_pull_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "run", str(EXAMPLES / "missing-image.yaml"), "--simulate")
    assert status == 1
    assert logs(out) == ["[setup] ready"]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "step compile" in errors[0]
    assert "example.invalid/no-such-image:1.0" in errors[0]
    rows = summary(out)
    assert rows["compile"][:3] == ["compile", "failed", "-"]
    assert rows["compile"][4] == "-"  # it never ran: no overhead to show
    assert rows["compile"][5].startswith("IMAGE_PULL")
    assert "Traceback" not in err


def test_many_lines_and_a_last_line_without_newline(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "run", str(EXAMPLES / "logs.yaml"), "--simulate")
    assert status == 0
    assert logs(out) == [f"[chatty] log line {i}" for i in range(1, 501)] + [
        "[chatty] the last line has no newline"
    ]


def test_invalid_bytes_are_replaced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = tmp_path / "bytes.yaml"
    pipeline.write_text(
        "steps: [{name: raw, image: busybox, commands: [\"printf 'a\\\\377b\\\\n'\"]}]\n"
    )
    status, out, err = run(capsys, "run", str(pipeline), "--simulate")
    assert status == 0, err
    assert logs(out) == ["[raw] a\ufffdb"]


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ("steps:\n  - name: a\n    image: busybox\n  - name: b\n", "steps[1].image"),
        ("steps:\n  - name: a\n    image: busybox\n    comands: [x]\n", "steps[0]"),
        ("steps: [\n", "line 2"),
    ],
)
def test_bad_pipeline_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, field: str
) -> None:
    pipeline = tmp_path / "bad.yaml"
    pipeline.write_text(content)
    status, out, err = run(capsys, "run", str(pipeline), "--simulate")
    assert status == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert field in err
    assert str(pipeline) in err
    assert "Traceback" not in err


def test_missing_pipeline_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "run", str(tmp_path / "absent.yaml"), "--simulate")
    assert status == 2
    assert out == ""
    assert err.strip() == f"error: {tmp_path / 'absent.yaml'}: no such file"


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "run")
    assert status == 2
    assert "PIPELINE.yaml" in err


def test_without_a_cluster_it_falls_back_to_simulation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    status, out, err = run(capsys, "run", str(EXAMPLES / "hello.yaml"))
    assert status == 0
    notes = [line for line in err.splitlines() if "simulating" in line]
    assert len(notes) == 1
    assert "no Kubernetes cluster configured" in notes[0]
    assert "[greet] hello" in out


def test_an_explicit_kubeconfig_that_does_not_exist_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "kubeconfig"
    status, _, err = run(capsys, "run", str(EXAMPLES / "hello.yaml"), "--kubeconfig", str(missing))
    assert status == 2
    assert err.strip() == f"error: --kubeconfig {missing}: no such file"


def test_a_kubeconfig_that_does_not_load_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n")
    status, _, err = run(capsys, "run", str(EXAMPLES / "hello.yaml"), "--kubeconfig", str(config))
    assert status == 2
    assert err.startswith(f"error: cannot load kubeconfig {config}")
    assert len(err.strip().splitlines()) == 1


def test_monitor_demo_prints_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "monitor", "--simulate-demo", "-n", "demo")
    assert status == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert all(
        {"build_id", "step", "kind", "reason", "exit_code", "message", "at"} <= set(e)
        for e in events
    )
    seen = {(e["build_id"], e["step"], e["kind"]) for e in events}
    assert ("demo-hello", "count", "completed") in seen
    assert ("demo-failing", "test", "failed") in seen
    assert ("demo-hello", None, "deleted") in seen
    assert ("demo-failing", None, "deleted") in seen


def test_monitor_without_a_cluster_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    status, _, err = run(capsys, "monitor")
    assert status == 2
    assert "--simulate-demo" in err


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NO_COLOR", None)
    return env


def test_python_dash_m(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "buildruntime", "run", "examples/hello.yaml", "--simulate"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert done.returncode == 0, done.stderr
    assert "[greet] hello\n[greet] done\n" in done.stdout
    assert "[count] line 3\n" in done.stdout
    assert re.search(r"^count\s+ok\s+0\s", done.stdout, re.MULTILINE)


def test_ctrl_c_removes_the_build_and_exits_130(tmp_path: Path) -> None:
    pipeline = tmp_path / "slow.yaml"
    sleep = f"sleep 30.{os.getpid()}{time.monotonic_ns() % 1000:03d}"  # unique to this run
    pipeline.write_text(
        "build_id: slow-1\nsteps:\n"
        f"  - {{name: wait, image: busybox, commands: ['echo started', '{sleep}']}}\n"
        "  - {name: after, image: busybox, commands: ['echo never']}\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "buildruntime", "run", str(pipeline), "--simulate"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert process.stdout is not None
    try:
        assert process.stdout.readline() == "[wait] started\n"
        time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "interrupted" in err
    assert "Traceback" not in err
    assert re.search(r"^wait\s+interrupted", out, re.MULTILINE), out
    assert re.search(r"^after\s+skipped", out, re.MULTILINE), out
    # The simulated step's process went with the build.
    assert not [pid for pid in _processes() if sleep in _cmdline(pid)]


def _processes() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def test_colour_only_on_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    status, out, _ = run(capsys, "run", str(EXAMPLES / "failing.yaml"), "--simulate")
    assert status == 3
    assert "\x1b[36m[build]\x1b[0m building" in out
    assert "\x1b[31mfailed" in out


def _spawn(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "buildruntime", *args],
        cwd=ROOT,
        text=True,
        env=kwargs.pop("env", _env()),
        **kwargs,
    )


def _gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs (a zombie waiting for its parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_sigterm_removes_the_build_and_exits_143(tmp_path: Path) -> None:
    pidfile = tmp_path / "step.pid"
    sleep = f"sleep 30.{os.getpid()}{time.monotonic_ns() % 1000:03d}"  # unique to this run
    pipeline = tmp_path / "slow.yaml"
    pipeline.write_text(
        "build_id: slow-term\nsteps:\n"
        f"  - {{name: wait, image: busybox, commands: ['echo $$ > {pidfile}', 'echo started',"
        f" '{sleep}']}}\n"
        "  - {name: after, image: busybox, commands: ['echo never']}\n"
    )
    process = _spawn(
        "run", str(pipeline), "--simulate", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        assert process.stdout.readline() == "[wait] started\n"
        step_pid = int(pidfile.read_text())
        assert not _gone(step_pid)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 143, err
    assert "interrupted by SIGTERM" in err
    assert "Traceback" not in err
    assert re.search(r"^wait\s+interrupted", out, re.MULTILINE), out
    assert re.search(r"^after\s+skipped", out, re.MULTILINE), out
    assert "never" not in out
    # The step's shell and its sleep went with the build.
    assert _gone(step_pid)
    assert not [pid for pid in _processes() if sleep in _cmdline(pid)]


def test_simulate_accepts_any_valid_image_name(tmp_path: Path) -> None:
    pipeline = tmp_path / "images.yaml"
    pipeline.write_text(
        "steps:\n"
        "  - {name: ubuntu, image: 'ubuntu:22.04', commands: ['echo on ubuntu']}\n"
        "  - {name: private, image: 'registry.example.com/team/tool:1.2.3', "
        "commands: ['echo on tool']}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "buildruntime", "run", str(pipeline), "--simulate"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert done.returncode == 0, done.stderr
    assert logs(done.stdout) == ["[ubuntu] on ubuntu", "[private] on tool"]
    assert "not found" not in done.stderr


def test_a_slow_stdout_reader_does_not_hold_the_build_back(tmp_path: Path) -> None:
    """Nobody reads stdout until the build's last step has run: far more output than a
    pipe holds must not stop the build, and every line arrives afterwards, in order."""
    marker = tmp_path / "last-step-ran"
    pipeline = tmp_path / "chatty.yaml"
    pipeline.write_text(
        "steps:\n"
        "  - {name: chatty, image: busybox, commands: ['seq 1 20000']}\n"
        f"  - {{name: last, image: busybox, commands: ['touch {marker}']}}\n"
    )
    errors = (tmp_path / "stderr").open("w")
    process = _spawn("run", str(pipeline), "--simulate", stdout=subprocess.PIPE, stderr=errors)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert process.poll() is None, "the command ended before its last step ran"
            assert time.monotonic() < deadline, "the build stalled while stdout was not read"
            time.sleep(0.05)
        out, _ = process.communicate(timeout=30)
    finally:
        process.kill()
        errors.close()
    assert process.returncode == 0, (tmp_path / "stderr").read_text()
    assert logs(out) == [f"[chatty] {i}" for i in range(1, 20001)]
    rows = summary(out)
    assert [r[:3] for r in rows.values()] == [["chatty", "ok", "0"], ["last", "ok", "0"]]


def test_a_stdout_that_cannot_encode_gets_replacement_characters(tmp_path: Path) -> None:
    pipeline = tmp_path / "unicode.yaml"
    pipeline.write_text(
        "steps: [{name: say, image: busybox, commands: ['echo caf\u00e9 \u2603', 'echo after']}]\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "buildruntime", "run", str(pipeline), "--simulate"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        env={**_env(), "PYTHONIOENCODING": "ascii"},
    )
    err = done.stderr.decode("ascii", errors="replace")
    assert done.returncode == 0, err
    assert "Traceback" not in err
    assert logs(done.stdout.decode("ascii")) == ["[say] caf? ?", "[say] after"]


def test_control_characters_are_escaped_when_stdout_is_not_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = tmp_path / "controls.yaml"
    pipeline.write_text(
        "steps: [{name: raw, image: busybox, commands: "
        "[\"printf 'a\\\\033[31mred\\\\033[0m\\\\tb\\\\rc\\\\001d\\\\n'\"]}]\n"
    )
    status, out, err = run(capsys, "run", str(pipeline), "--simulate")
    assert status == 0, err
    assert logs(out) == ["[raw] a\\x1b[31mred\\x1b[0m\tb\\rc\\x01d"]
    assert "\x1b" not in out
    assert "\r" not in out


def test_control_characters_pass_to_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    pipeline = tmp_path / "controls.yaml"
    pipeline.write_text(
        "steps: [{name: raw, image: busybox, commands: [\"printf 'a\\\\033[1mb\\\\n'\"]}]\n"
    )
    status, out, _ = run(capsys, "run", str(pipeline), "--simulate")
    assert status == 0
    assert logs(out) == ["[raw] a\x1b[1mb"]


def test_an_unreachable_cluster_fails_after_api_timeout_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:{port}', "
        "insecure-skip-tls-verify: true}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "buildruntime",
            "run",
            "examples/hello.yaml",
            "--kubeconfig",
            str(kubeconfig),
            "--api-timeout",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 1
    assert elapsed < 10, f"took {elapsed:.1f}s"
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: cannot reach the Kubernetes API server")
    assert f"https://127.0.0.1:{port}" in lines[0]
    assert "refused" in lines[0]


def _kubeconfig(tmp_path: Path, server: str) -> Path:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: '{server}'}}}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
    )
    return kubeconfig


def test_an_api_server_that_refuses_everything_fails_with_one_line(tmp_path: Path) -> None:
    """Answers, but none to go on with (a proxy's 403): one line that says so."""

    class Forbidden(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"kind":"Status","status":"Failure","reason":"Forbidden","code":403}'
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_DELETE = do_PATCH = do_GET

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forbidden) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        address = f"http://127.0.0.1:{server.server_address[1]}"
        kubeconfig = str(_kubeconfig(tmp_path, address))
        started = time.monotonic()
        done = subprocess.run(
            [
                *(sys.executable, "-m", "buildruntime", "run", "examples/hello.yaml"),
                *("--kubeconfig", kubeconfig, "--api-timeout", "2"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(),
        )
        server.shutdown()
    assert done.returncode == 1
    assert time.monotonic() - started < 10
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    # The runtime's first request (its worker Lease) is refused: said at once.
    assert lines[0].startswith(
        f"error: the Kubernetes API server {address} refused the worker's Lease"
    )
    assert "Forbidden" in lines[0]


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan"])
def test_a_bad_api_timeout_is_a_one_line_usage_error(
    capsys: pytest.CaptureFixture[str], value: str
) -> None:
    status, out, err = run(
        capsys, "run", str(EXAMPLES / "hello.yaml"), "--simulate", "--api-timeout", value
    )
    assert status == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert "--api-timeout" in err


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "run", str(EXAMPLES / "hello.yaml"), "--no-such-flag")
    assert status == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "--no-such-flag" in err


def _recording_open_cluster(monkeypatch: pytest.MonkeyPatch, seen: list[object]) -> None:
    from buildruntime.cli import run as run_module

    real = run_module.open_cluster

    @contextlib.asynccontextmanager
    async def recording(*args: Any, **kwargs: Any) -> AsyncIterator[object]:
        async with real(*args, **kwargs) as cluster:
            seen.append(cluster)
            yield cluster

    monkeypatch.setattr(run_module, "open_cluster", recording)


@pytest.mark.parametrize("source", ["flag", "environment"])
def test_pause_image_from_the_flag_or_the_environment(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    source: str,
) -> None:
    seen: list[Any] = []
    _recording_open_cluster(monkeypatch, seen)
    pipeline = tmp_path / "pause.yaml"
    pipeline.write_text(
        "build_id: pause-1\nsteps:\n"
        "  - {name: one, image: busybox, commands: ['echo one']}\n"
        "  - {name: two, image: busybox, commands: ['echo two']}\n"
    )
    image = "mirror.example.com/pause:3.10"
    args = ["run", str(pipeline), "--simulate", "-n", "ci"]
    if source == "flag":
        monkeypatch.setenv("BUILDRUNTIME_PAUSE_IMAGE", "elsewhere.example.com/pause:1")
        args += ["--pause-image", image]
    else:
        monkeypatch.setenv("BUILDRUNTIME_PAUSE_IMAGE", image)
    status, out, err = run(capsys, *args)
    assert status == 0, err
    assert logs(out) == ["[one] one", "[two] two"]
    (cluster,) = seen
    created = cluster.history("ci", load_pipeline_file(pipeline).pod_name)[0]
    assert [c["image"] for c in created["spec"]["containers"]] == [image, image]


@pytest.mark.parametrize("source", ["flag", "environment"])
def test_placeholder_image_from_the_flag_or_the_environment(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    source: str,
) -> None:
    """The simulation knows the placeholder it is given: a step's commands become its
    container's command, and they run."""
    seen: list[Any] = []
    _recording_open_cluster(monkeypatch, seen)
    pipeline = tmp_path / "placeholder.yaml"
    pipeline.write_text(
        "build_id: placeholder-1\nsteps:\n"
        "  - {name: one, image: alpine/git, commands: ['echo one']}\n"
    )
    image = "mirror.example.com/buildruntime-placeholder:1"
    args = ["run", str(pipeline), "--simulate", "-n", "ci"]
    if source == "flag":
        monkeypatch.setenv("BUILDRUNTIME_PLACEHOLDER_IMAGE", "elsewhere.example.com/p:1")
        args += ["--placeholder-image", image]
    else:
        monkeypatch.setenv("BUILDRUNTIME_PLACEHOLDER_IMAGE", image)
    status, out, err = run(capsys, *args)
    assert status == 0, err
    assert logs(out) == ["[one] one"]
    (cluster,) = seen
    (container,) = cluster.history("ci", "placeholder-1")[0]["spec"]["containers"]
    assert container["image"] == image
    assert container["command"] == ["/bin/sh", "-c", "set -e\necho one"]
    assert "args" not in container


def test_a_bad_pause_image_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(
        capsys, "run", str(EXAMPLES / "hello.yaml"), "--simulate", "--pause-image", "not an image"
    )
    assert status == 2
    assert out == ""
    assert err.strip() == "error: --pause-image 'not an image': must not contain whitespace"


def test_run_help_lists_every_key_of_the_pipeline_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from buildruntime.pipeline import STEP_KEYS, TOP_LEVEL_KEYS

    status, out, _ = run(capsys, "run", "--help")
    assert status == 0
    epilog = out[out.index("pipeline file keys:") :]
    listed = [line.split()[0] for line in epilog.splitlines() if line.startswith("  ")]
    for key in (*TOP_LEVEL_KEYS, *STEP_KEYS):
        assert key in listed, key
    assert "--pause-image" in out
    assert "BUILDRUNTIME_PAUSE_IMAGE" in out
    assert "--placeholder-image" in out
    assert "BUILDRUNTIME_PLACEHOLDER_IMAGE" in out
    assert "--api-timeout" in out
    assert "default: 30" in out


# -- step rules: environment, failure: ignore, when: status, depends_on ------------------


def table(out: str) -> dict[str, dict[str, str]]:
    """The summary table's rows by step name, each cell under its column's header (an
    empty cell stays empty, unlike in ``summary``)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("STEP "))
    header = lines[start]
    names = re.split(r"\s{2,}", header.strip())
    starts = [header.index(name) for name in names]
    rows: dict[str, dict[str, str]] = {}
    for line in lines[start + 1 :]:
        cells = {
            name: line[begin:end].strip()
            for name, begin, end in zip(names, starts, [*starts[1:], None], strict=True)
        }
        rows[cells["STEP"]] = cells
    return rows


def pipeline_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return str(path)


def test_environment_sets_the_steps_variables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = pipeline_file(
        tmp_path,
        "steps:\n"
        "  - {name: new, image: busybox, environment: {WHO: new}, commands: ['echo $WHO']}\n"
        "  - {name: old, image: busybox, env: {WHO: old}, commands: ['echo $WHO']}\n",
    )
    status, out, err = run(capsys, "run", path, "--simulate")
    assert status == 0, err
    assert logs(out) == ["[new] new", "[old] old"]


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (
            "{name: both, image: busybox, env: {A: b}, environment: {A: c}}",
            "steps[0]: step 'both' has both 'environment' and 'env' (env is an alias of "
            "environment): keep one",
        ),
        ("{name: a, image: busybox, failure: never}", "steps[0].failure: 'never' is not one of"),
        (
            "{name: a, image: busybox, when: {status: [success, failed]}}",
            "steps[0].when.status: 'failed' is not one of success, failure",
        ),
        (
            "{name: a, image: busybox, depends_on: [nope]}",
            "steps[0].depends_on: step 'a' depends on 'nope', which is no step",
        ),
        (
            "{name: a, image: busybox, depends_on: [a]}",
            "steps[0].depends_on: step 'a' depends on itself",
        ),
    ],
)
def test_bad_step_rules_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], step: str, message: str
) -> None:
    path = pipeline_file(tmp_path, f"steps:\n  - {step}\n")
    status, out, err = run(capsys, "run", path, "--simulate")
    assert status == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {path}: {message}"), err


def test_a_dependency_cycle_exits_2_naming_its_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = pipeline_file(
        tmp_path,
        "steps:\n"
        "  - {name: a, image: busybox}\n"
        "  - {name: b, image: busybox, depends_on: [c]}\n"
        "  - {name: c, image: busybox, depends_on: [b]}\n",
    )
    status, out, err = run(capsys, "run", path, "--simulate")
    assert status == 2
    assert out == ""
    assert err.strip() == f"error: {path}: steps: depends_on forms a cycle: b -> c -> b"


def test_an_ignored_failure_fails_neither_the_build_nor_the_steps_after(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = pipeline_file(
        tmp_path,
        "steps:\n"
        "  - {name: lint, image: busybox, failure: ignore, commands: ['echo warned', 'exit 4']}\n"
        "  - {name: test, image: busybox, commands: ['echo tested']}\n",
    )
    status, out, err = run(capsys, "run", path, "--simulate")
    assert status == 0, err
    assert logs(out) == ["[lint] warned", "[test] tested"]
    rows = table(out)
    assert (rows["lint"]["RESULT"], rows["lint"]["EXIT"]) == ("failed (ignored)", "4")
    assert rows["lint"]["FAILURE"] == "APP_ERROR: Error"
    assert (rows["test"]["RESULT"], rows["test"]["EXIT"]) == ("ok", "0")
    assert "[lint] failed: exit code 4 (APP_ERROR: Error)" in err.splitlines()
    assert "[lint] failure ignored (failure: ignore)" in err.splitlines()


def test_an_ignored_failure_then_a_real_one_exits_with_the_real_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = pipeline_file(
        tmp_path,
        "steps:\n"
        "  - {name: lint, image: busybox, failure: ignore, commands: ['exit 4']}\n"
        "  - {name: test, image: busybox, failure: fail, commands: ['exit 6']}\n"
        "  - {name: publish, image: busybox, commands: ['echo never']}\n",
    )
    status, out, _ = run(capsys, "run", path, "--simulate")
    assert status == 6
    rows = table(out)
    assert [rows[n]["RESULT"] for n in ("lint", "test", "publish")] == [
        "failed (ignored)",
        "failed",
        "skipped",
    ]


def test_an_ignored_image_pull_failure_is_ignored_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = pipeline_file(
        tmp_path,
        "steps:\n"
        "  - {name: pull, image: example.invalid/nothing:1, failure: ignore}\n"
        "  - {name: after, image: busybox, commands: ['echo after']}\n",
    )
    status, out, err = run(capsys, "run", path, "--simulate")
    assert status == 0, err
    assert logs(out) == ["[after] after"]
    rows = table(out)
    assert (rows["pull"]["RESULT"], rows["pull"]["EXIT"]) == ("failed (ignored)", "-")
    assert rows["pull"]["FAILURE"].startswith("IMAGE_PULL")


WHEN = (
    "steps:\n"
    "  - {{name: build, image: busybox, commands: ['echo built', 'exit {code}']}}\n"
    "  - {{name: publish, image: busybox, commands: ['echo published']}}\n"
    "  - {{name: notify, image: busybox, when: {{status: failure}}, "
    "commands: ['echo build failed', 'exit 9']}}\n"
    "  - {{name: cleanup, image: busybox, when: {{status: [success, failure]}}, "
    "commands: ['echo cleaned']}}\n"
    "  - {{name: done, image: busybox, when: {{status: success}}, commands: ['echo done']}}\n"
)


def test_failure_steps_run_after_a_failure_and_the_first_code_stays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(
        capsys, "run", pipeline_file(tmp_path, WHEN.format(code=3)), "--simulate"
    )
    # notify itself fails with 9: the build's status stays build's 3.
    assert status == 3, err
    assert logs(out) == ["[build] built", "[notify] build failed", "[cleanup] cleaned"]
    rows = table(out)
    assert {name: row["RESULT"] for name, row in rows.items()} == {
        "build": "failed",
        "publish": "skipped",
        "notify": "failed",
        "cleanup": "ok",
        "done": "skipped",
    }


def test_failure_steps_are_skipped_when_nothing_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(
        capsys, "run", pipeline_file(tmp_path, WHEN.format(code=0)), "--simulate"
    )
    assert status == 0, err
    assert logs(out) == ["[build] built", "[publish] published", "[cleanup] cleaned", "[done] done"]
    rows = table(out)
    assert rows["notify"]["RESULT"] == "skipped"
    assert rows["notify"]["EXIT"] == "-"


def test_depends_on_runs_independent_steps_at_the_same_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = pipeline_file(
        tmp_path,
        "steps:\n"
        "  - {name: build, image: busybox, commands: ['echo built']}\n"
        "  - {name: left, image: busybox, depends_on: [build], "
        "commands: ['echo left 1', 'sleep 2', 'echo left 2']}\n"
        "  - {name: right, image: busybox, depends_on: [build], "
        "commands: ['echo right 1', 'sleep 2', 'echo right 2']}\n"
        "  - {name: join, image: busybox, depends_on: [left, right], commands: ['echo joined']}\n",
    )
    began = time.monotonic()
    status, out, err = run(capsys, "run", path, "--simulate")
    took = time.monotonic() - began
    assert status == 0, err
    lines = logs(out)
    assert lines[0] == "[build] built"
    assert lines[-1] == "[join] joined"
    # Interleaved, each step's own lines in their order under its own prefix.
    assert [line for line in lines if line.startswith("[left]")] == [
        "[left] left 1",
        "[left] left 2",
    ]
    assert [line for line in lines if line.startswith("[right]")] == [
        "[right] right 1",
        "[right] right 2",
    ]
    assert sorted(lines[1:3]) == ["[left] left 1", "[right] right 1"]
    assert took < 2 + 2, f"{took:.1f}s: the two 2-second steps did not run at the same time"
    rows = table(out)
    assert rows["left"]["PARALLEL WITH"] == "right"
    assert rows["right"]["PARALLEL WITH"] == "left"
    assert rows["build"]["PARALLEL WITH"] == ""
    assert rows["join"]["PARALLEL WITH"] == ""
    assert all(row["RESULT"] == "ok" for row in rows.values())


def test_in_a_dag_steps_without_depends_on_start_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = pipeline_file(
        tmp_path,
        "steps:\n"
        "  - {name: slow, image: busybox, commands: ['sleep 1.5', 'echo slow']}\n"
        "  - {name: free, image: busybox, commands: ['echo free']}\n"
        "  - {name: after, image: busybox, depends_on: [slow], commands: ['echo after']}\n",
    )
    status, out, err = run(capsys, "run", path, "--simulate")
    assert status == 0, err
    assert logs(out) == ["[free] free", "[slow] slow", "[after] after"]
    assert table(out)["free"]["PARALLEL WITH"] == "slow"


def test_a_failed_dependency_skips_its_dependents_unless_they_run_on_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = pipeline_file(
        tmp_path,
        "steps:\n"
        "  - {name: test, image: busybox, depends_on: [], commands: ['exit 7']}\n"
        "  - {name: publish, image: busybox, depends_on: [test], commands: ['echo never']}\n"
        "  - {name: report, image: busybox, depends_on: [test], when: {status: failure}, "
        "commands: ['echo reporting']}\n"
        "  - {name: lint, image: busybox, depends_on: [], failure: ignore, commands: ['exit 1']}\n"
        "  - {name: docs, image: busybox, depends_on: [lint, test], "
        "when: {status: [success, failure]}, commands: ['echo docs']}\n",
    )
    status, out, _ = run(capsys, "run", path, "--simulate")
    assert status == 7
    assert sorted(logs(out)) == ["[docs] docs", "[report] reporting"]
    rows = table(out)
    assert {name: row["RESULT"] for name, row in rows.items()} == {
        "test": "failed",
        "publish": "skipped",
        "report": "ok",
        "lint": "failed (ignored)",
        "docs": "ok",
    }


def test_the_example_pipeline_runs(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "run", str(EXAMPLES / "pipeline.yaml"), "--simulate")
    assert status == 0, err
    lines = logs(out)
    assert lines[0] == "[build] building 1.2.3"
    assert sorted(lines[1:3]) == ["[lint] 2 style warnings", "[test] 12 tests passed"]
    assert lines[3:] == [
        "[publish] publishing example",
        "[publish] published",
        "[cleanup] cleaning up",
    ]
    rows = table(out)
    assert {name: row["RESULT"] for name, row in rows.items()} == {
        "build": "ok",
        "lint": "failed (ignored)",
        "test": "ok",
        "publish": "ok",
        "notify": "skipped",
        "cleanup": "ok",
    }
    assert rows["lint"]["PARALLEL WITH"] == "test"


def test_run_help_explains_the_step_rules(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "run", "--help")
    assert status == 0
    epilog = out[out.index("pipeline file keys:") :]
    for key in ("environment", "env", "failure", "when", "depends_on"):
        assert re.search(rf"^  {key}\s", epilog, re.MULTILINE), key
    flat = " ".join(epilog.split())
    assert "alias of environment" in flat
    assert "steps without depends_on depend on nothing" in flat
    assert "in file order" in flat
    assert "failed (ignored)" in flat
    # The epilog is laid out by hand (argparse wraps the options to the terminal).
    long = [line for line in epilog.splitlines() if len(line) > 80]
    assert long == [], "lines wider than a terminal"


def test_a_build_whose_pod_is_gone_runs_no_more_steps() -> None:
    plan = load_plan_text(
        "build_id: gone-1\nsteps:\n"
        "  - {name: long, image: busybox, failure: ignore, commands: ['echo up', 'sleep 30']}\n"
        "  - {name: always, image: busybox, when: {status: [success, failure]}, "
        "commands: ['echo never']}\n"
    )
    out, err = io.StringIO(), io.StringIO()
    console = Console(out, err, colour=False)

    async def main() -> int:
        async with FakeCluster(images={"busybox"}) as cluster, Runtime(cluster, "ci") as rt:
            async with anyio.create_task_group() as tg:

                async def delete_when_up() -> None:
                    while "[long] up" not in out.getvalue():
                        await anyio.to_thread.run_sync(console.flush)
                        await anyio.sleep(0.05)
                    await cluster.delete_pod("ci", plan.spec.pod_name)

                tg.start_soon(delete_when_up)
                with anyio.fail_after(30):
                    status = await cli.run_build(rt, plan, console)
                tg.cancel_scope.cancel()
            return status

    status = anyio.run(main)
    console.close()
    # Not even failure: ignore or when: failure make a step of a deleted pod run.
    assert status == 1, err.getvalue()
    rows = table(out.getvalue())
    assert (rows["long"]["RESULT"], rows["always"]["RESULT"]) == ("failed", "skipped")
    assert "never" not in out.getvalue()


# -- services, detached steps, the workspace and volumes ---------------------------------


def test_run_help_documents_services_workspace_and_volumes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, _ = run(capsys, "run", "--help")
    assert status == 0
    epilog = out[out.index("pipeline file keys:") :]
    for key in ("services", "workspace", "volumes", "detach", "ports"):
        assert re.search(rf"^  {key}\s", epilog, re.MULTILINE), key
    # volumes is both a top-level key and a step key: listed twice.
    assert len(re.findall(r"^  volumes\s", epilog, re.MULTILINE)) == 2
    flat = " ".join(epilog.split())
    assert "started before the steps" in flat
    assert '"name:/path"' in flat
    assert "size_limit" in flat
    assert "Services start first, one after another in file order" in flat
    assert "removing the build stops it" in flat
    assert "examples/app.yaml" in flat
    assert [line for line in epilog.splitlines() if len(line) > 80] == []


class _Container:
    """One scripted container: its lines, how it ends, whether it ends by itself."""

    def __init__(self, lines: list[str], exit_code: int, *, runs_for: float | None) -> None:
        self.lines = [line.encode() for line in lines]
        self.exit_code = exit_code
        self.runs_for = runs_for  # None: until the build is removed (a service)
        self.ended = anyio.Event()
        self.stopped = False


class ScriptedRuntime:
    """A Runtime stand-in whose containers follow a script, to test the order in which
    ``run`` starts, awaits and stops services and steps whatever a cluster supports.

    ``script``: step name to (lines, exit code, seconds it runs or None for "until
    stopped", ready): a service that is not ready fails ``run_container`` with a
    ServiceError after printing its lines and exiting with its code."""

    api_timeout = 30.0

    def __init__(self, script: dict[str, tuple[list[str], int, float | None, bool]]) -> None:
        self.script = script
        self.calls: list[tuple[str, str]] = []
        self.containers: dict[str, _Container] = {}

    async def setup_build(self, spec: Any) -> Any:
        class _Build:
            build_id = spec.build_id

            def __init__(self) -> None:
                self.spec = spec

            async def events(self) -> AsyncIterator[Any]:
                await anyio.sleep_forever()
                yield None  # pragma: no cover

        return _Build()

    async def assemble_build(self, build: Any) -> None:
        self.calls.append(("assemble", ""))

    async def run_container(self, build: Any, step: str) -> None:
        lines, code, runs_for, ready = self.script[step]
        self.calls.append(("run", step))
        container = self.containers[step] = _Container(lines, code, runs_for=runs_for)
        await anyio.sleep(0.05)  # the image patch, the start, the readiness probe
        if not ready:
            container.ended.set()
            raise ServiceError(
                f"service {step} exited with code {code} before port 5432 accepted connections",
                build_id=build.build_id,
                step=step,
                reason="Error",
                message="last lines: " + " | ".join(lines),
            )
        self.calls.append(("ready", step))
        if runs_for is not None:

            async def end() -> None:
                await anyio.sleep(runs_for)
                container.ended.set()

            self._tg.start_soon(end)

    async def tail_container(self, build: Any, step: str) -> AsyncIterator[bytes]:
        container = self.containers[step]
        for line in container.lines:
            yield line
        await container.ended.wait()
        self.calls.append(("tail ended", step))

    async def wait_container(self, build: Any, step: str) -> StepResult:
        self.calls.append(("wait", step))
        await self.containers[step].ended.wait()
        return await self.inspect_container(build, step)

    async def inspect_container(self, build: Any, step: str) -> StepResult:
        container = self.containers[step]
        if not container.ended.is_set():
            return StepResult(step=step, state="running")
        code = 143 if container.stopped else container.exit_code
        return StepResult(
            step=step,
            state="terminated",
            exit_code=code,
            reason="Completed" if code == 0 else "Error",
            failure=None if code == 0 else Failure.APP_ERROR,
        )

    async def remove_build(self, build: Any) -> None:
        self.calls.append(("remove", ""))
        for container in self.containers.values():
            if not container.ended.is_set():
                container.stopped = True
                container.ended.set()

    def run(self, plan: Any) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        console = Console(out, err, colour=False)

        async def main() -> int:
            async with anyio.create_task_group() as self._tg:
                with anyio.fail_after(20):
                    return await cli.run_build(self, plan, console)  # type: ignore[arg-type]

        status = anyio.run(main)
        console.close()
        return status, out.getvalue(), err.getvalue()


SERVICE_PIPELINE = """
build_id: svc-1
services:
  - {name: db, image: busybox, ports: [5432]}
  - {name: cache, image: busybox}
steps:
  - {name: build, image: busybox}
  - {name: test, image: busybox}
  - {name: notify, image: busybox, when: {status: failure}}
"""


def test_services_start_first_in_file_order_and_stop_with_the_build() -> None:
    rt = ScriptedRuntime(
        {
            "db": (["db up"], 0, None, True),
            "cache": (["cache up"], 0, None, True),
            "build": (["built"], 0, 0.1, True),
            "test": (["tested"], 0, 0.1, True),
            "notify": (["never"], 0, 0.1, True),
        }
    )
    status, out, err = rt.run(load_plan_text(SERVICE_PIPELINE))
    assert status == 0, err
    # Each service ready before the next starts, both before the first step; only the
    # steps are awaited; the build's removal ends the services' logs.
    assert rt.calls[:6] == [
        ("assemble", ""),
        ("run", "db"),
        ("ready", "db"),
        ("run", "cache"),
        ("ready", "cache"),
        ("run", "build"),
    ]
    assert ("wait", "db") not in rt.calls
    assert ("wait", "cache") not in rt.calls
    assert rt.calls.index(("remove", "")) < rt.calls.index(("tail ended", "db"))
    assert rt.calls.index(("wait", "test")) < rt.calls.index(("remove", ""))
    assert sorted(logs(out)) == ["[build] built", "[cache] cache up", "[db] db up", "[test] tested"]
    rows = table(out)
    assert {name: (row["RESULT"], row["EXIT"]) for name, row in rows.items()} == {
        "db": ("stopped", "-"),
        "cache": ("stopped", "-"),
        "build": ("ok", "0"),
        "test": ("ok", "0"),
        "notify": ("skipped", "-"),
    }
    # Services run beside every step by design: no PARALLEL WITH column for them.
    assert "PARALLEL WITH" not in out
    assert err == ""


def test_a_service_that_is_never_ready_fails_the_build_with_one_line() -> None:
    rt = ScriptedRuntime(
        {
            "db": (["starting", "cannot open data directory"], 3, None, False),
            "cache": ([], 0, None, True),
            "build": ([], 0, 0.1, True),
            "test": ([], 0, 0.1, True),
            "notify": (["telling the team"], 0, 0.1, True),
        }
    )
    status, out, err = rt.run(load_plan_text(SERVICE_PIPELINE))
    assert status == 1
    assert err.splitlines() == [
        "error: build svc-1, step db: service db exited with code 3 before port 5432 "
        "accepted connections: last lines: starting | cannot open data directory (Error)"
    ]
    # Its lines, as a failing step's; then only what runs after a failure.
    assert logs(out) == [
        "[db] starting",
        "[db] cannot open data directory",
        "[notify] telling the team",
    ]
    assert ("run", "cache") not in rt.calls
    rows = table(out)
    assert {name: (row["RESULT"], row["EXIT"]) for name, row in rows.items()} == {
        "db": ("failed", "3"),
        "cache": ("skipped", "-"),
        "build": ("skipped", "-"),
        "test": ("skipped", "-"),
        "notify": ("ok", "0"),
    }
    assert rows["db"]["FAILURE"] == "APP_ERROR: Error"


def test_a_service_that_dies_while_the_build_runs_is_shown_failed() -> None:
    rt = ScriptedRuntime(
        {
            "db": (["db up", "out of memory"], 137, 0.05, True),
            "cache": ([], 0, 0.05, True),
            "build": ([], 0, 0.5, True),
            "test": (["tested"], 0, 0.1, True),
            "notify": ([], 0, 0.1, True),
        }
    )
    status, out, err = rt.run(load_plan_text(SERVICE_PIPELINE))
    # Its end is said and shown; the steps that needed it fail by themselves.
    assert status == 0, err
    assert "[db] service ended while the build ran: exit code 137 (APP_ERROR: Error)" in err
    assert "[cache] service ended (exit code 0)" in err
    rows = table(out)
    assert (rows["db"]["RESULT"], rows["db"]["EXIT"]) == ("failed", "137")
    assert (rows["cache"]["RESULT"], rows["cache"]["EXIT"]) == ("ok", "0")
    assert rows["test"]["RESULT"] == "ok"


def test_a_detached_step_starts_at_its_turn_and_its_dependants_once_it_is_ready() -> None:
    plan = load_plan_text(
        "build_id: det-1\nsteps:\n"
        "  - {name: build, image: busybox}\n"
        "  - {name: web, image: busybox, detach: true, ports: [8080], depends_on: [build]}\n"
        "  - {name: left, image: busybox, depends_on: [web]}\n"
        "  - {name: right, image: busybox, depends_on: [web]}\n"
    )
    rt = ScriptedRuntime(
        {
            "build": (["built"], 0, 0.1, True),
            "web": (["serving"], 0, None, True),
            "left": ([], 0, 0.3, True),
            "right": ([], 0, 0.3, True),
        }
    )
    status, out, err = rt.run(plan)
    assert status == 0, err
    calls = rt.calls
    assert calls.index(("wait", "build")) < calls.index(("run", "web"))
    assert calls.index(("ready", "web")) < calls.index(("run", "left"))
    assert calls.index(("ready", "web")) < calls.index(("run", "right"))
    assert ("wait", "web") not in calls
    rows = table(out)
    assert {name: (row["RESULT"], row["PARALLEL WITH"]) for name, row in rows.items()} == {
        "build": ("ok", ""),
        "web": ("stopped", ""),
        "left": ("ok", "right"),
        "right": ("ok", "left"),
    }
    assert "[web] serving" in logs(out)


def test_a_detached_step_never_ready_fails_the_build_unless_ignored() -> None:
    text = (
        "build_id: det-2\nsteps:\n"
        "  - {name: web, image: busybox, detach: true, ports: [8080]FAILURE}\n"
        "  - {name: test, image: busybox}\n"
    )
    script: dict[str, tuple[list[str], int, float | None, bool]] = {
        "web": (["bind: address in use"], 1, None, False),
        "test": (["tested"], 0, 0.1, True),
    }
    status, out, err = ScriptedRuntime(script).run(load_plan_text(text.replace("FAILURE", "")))
    assert status == 1
    assert len(err.splitlines()) == 1
    assert "service web exited with code 1" in err
    assert table(out)["test"]["RESULT"] == "skipped"
    status, out, err = ScriptedRuntime(script).run(
        load_plan_text(text.replace("FAILURE", ", failure: ignore"))
    )
    assert status == 0, err
    assert table(out)["web"]["RESULT"] == "failed (ignored)"
    assert table(out)["test"]["RESULT"] == "ok"


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "buildruntime", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )


def _by_step(out: str) -> dict[str, list[str]]:
    """Each step's log lines, in order: steps that run at the same time interleave."""
    lines: dict[str, list[str]] = {}
    for line in logs(out):
        name, _, text = line.partition("] ")
        lines.setdefault(name[1:], []).append(text)
    return lines


APP_LOGS = {
    "web": ["serving public/ on port 8088"],
    "checkout": ["checked out src/index.html.in and src/build.sh"],
    "build": ["index.html", "VERSION", "built app 1.4.2"],
    "test-page": ["Hello from app 1.4.2", "page ok"],
    "test-archive": ["archive holds version 1.4.2"],
    "e2e": ["staging did not answer in time"],
}
"""examples/app.yaml's log lines by step, the same on every target."""
APP_RESULTS = {
    "web": ("stopped", "-"),
    "checkout": ("ok", "0"),
    "build": ("ok", "0"),
    "test-page": ("ok", "0"),
    "test-archive": ("ok", "0"),
    "e2e": ("failed (ignored)", "1"),
    "notify": ("skipped", "-"),
}


def test_the_app_example_runs_with_its_service() -> None:
    done = _run_cli("run", "examples/app.yaml", "--simulate")
    assert done.returncode == 0, done.stderr
    assert _by_step(done.stdout) == APP_LOGS
    # The service first, then the steps in their order.
    assert logs(done.stdout)[:5] == [
        "[web] serving public/ on port 8088",
        "[checkout] checked out src/index.html.in and src/build.sh",
        "[build] index.html",
        "[build] VERSION",
        "[build] built app 1.4.2",
    ]
    rows = table(done.stdout)
    assert {name: (row["RESULT"], row["EXIT"]) for name, row in rows.items()} == APP_RESULTS
    assert rows["test-page"]["PARALLEL WITH"].startswith("test-archive")
    assert rows["web"]["PARALLEL WITH"] == ""
    assert done.stderr.splitlines() == [
        "[e2e] failed: exit code 1 (APP_ERROR: Error)",
        "[e2e] failure ignored (failure: ignore)",
    ]


def test_a_service_that_dies_before_it_is_ready_exits_1_with_one_line(tmp_path: Path) -> None:
    path = pipeline_file(
        tmp_path,
        "build_id: svc-dies-1\n"
        "services:\n"
        "  - name: db\n"
        "    image: busybox\n"
        "    ports: [5432]\n"
        # Both lines on stderr: a container's stdout and stderr lines interleave in
        # whichever order the pipes deliver them.
        "    commands: ['echo starting >&2', 'echo cannot open data directory >&2', "
        "'exit 3']\n"
        "steps:\n"
        "  - {name: test, image: busybox, commands: ['echo never']}\n",
    )
    done = _run_cli("run", path, "--simulate")
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        "error: build svc-dies-1, step db: service db exited with code 3 before port 5432 "
        "accepted connections: last lines: starting | cannot open data directory (Error)"
    ]
    assert logs(done.stdout) == ["[db] starting", "[db] cannot open data directory"]
    rows = table(done.stdout)
    assert {name: (row["RESULT"], row["EXIT"]) for name, row in rows.items()} == {
        "db": ("failed", "3"),
        "test": ("skipped", "-"),
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "volumes: {cache: {emptydir: {}}}\n",
            "volumes.cache: 'emptydir' is not one of configMap, secret, emptyDir, "
            "persistentVolumeClaim, hostPath (did you mean 'emptyDir'?)",
        ),
        (
            "volumes: {cache: {persistentVolumeClaim: {name: c}}}\n",
            "volumes.cache.persistentVolumeClaim: needs claimName (a string)",
        ),
        (
            "workspace: relative/path\n",
            "workspace.path: must be an absolute path, not 'relative/path'",
        ),
        ("workspace: {medium: disk}\n", "workspace.medium: 'disk' is not Memory"),
        (
            "services: [{name: db, image: busybox, when: {status: failure}}]\n",
            "services[0]: a service has no 'when': services start before every step, in "
            "file order (a step with detach: true starts at its turn)",
        ),
        (
            "services: [{name: db, image: busybox, ports: [99999]}]\n",
            "services[0].ports[0]: 99999 is not a TCP port number (1-65535)",
        ),
        (
            "volumes: {cache: {emptyDir: {}}}\nsteps+ volumes: ['cache:/a', 'cahce:/b']",
            "steps[0].volumes[1]: no volume 'cahce' under volumes (cache)",
        ),
        (
            "steps+ ports: [80]",
            "steps[0].ports: only a detached step (a service) has ports",
        ),
    ],
)
def test_bad_services_workspace_and_volumes_exit_2_with_one_line(
    tmp_path: Path, text: str, message: str
) -> None:
    head, _, step_keys = text.partition("steps+ ")
    extra = f", {step_keys}" if step_keys else ""
    path = pipeline_file(tmp_path, f"{head}steps:\n  - {{name: a, image: busybox{extra}}}\n")
    done = _run_cli("run", path, "--simulate")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [f"error: {path}: {message}"]


# -- secrets, registries and the pod policy fields ---------------------------------------

TOKEN = "tok-3f9a2c71e5"
KEY_LINES = ("first line of the key", "second-line-9931")
"""A from_file secret of two lines: each line is masked on its own."""


def _leaks(text: str) -> list[str]:
    """Which of the secret values ``text`` shows."""
    return [value for value in (TOKEN, *KEY_LINES) if value in text]


def test_the_console_masks_what_the_command_says_itself() -> None:
    from buildruntime.secrets import Masker, SecretValue

    out, err = io.StringIO(), io.StringIO()
    console = Console(out, err, colour=False, masker=Masker([SecretValue(TOKEN)]))
    console.error(f"the API server said: bad token {TOKEN}")
    console.note(f"[deploy] failed: {TOKEN}")
    console.line(f"deploy  failed  1  0.10s  APP_ERROR: {TOKEN}")
    # Step logs come masked by the library: written as they are.
    console.log("deploy", b"already masked: ********")
    console.close()
    assert err.getvalue().splitlines() == [
        "error: the API server said: bad token ********",
        "[deploy] failed: ********",
    ]
    assert out.getvalue().splitlines() == [
        "deploy  failed  1  0.10s  APP_ERROR: ********",
        "[deploy] already masked: ********",
    ]


def test_run_masks_its_own_lines_from_the_moment_the_secrets_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whatever hands the command a value (a message the library did not mask, an
    exception of some client library), no line it writes shows it."""
    import buildruntime.cli.run as run_module

    async def leaky_run_build(rt: Runtime, plan: object, console: Console, **_: object) -> int:
        console.error(f"something said {TOKEN}")
        console.note(f"a note with {KEY_LINES[1]}")
        console.line(f"a summary cell with {TOKEN}")
        return 1

    monkeypatch.setattr(run_module, "run_build", leaky_run_build)
    monkeypatch.setenv("BR_TEST_TOKEN", TOKEN)
    (tmp_path / "key").write_text("\n".join(KEY_LINES) + "\n")
    path = pipeline_file(
        tmp_path,
        "secrets:\n  token: {from_env: BR_TEST_TOKEN}\n  key: {from_file: key}\n"
        "steps: [{name: a, image: busybox, secrets: [token, key]}]\n",
    )
    status, out, err = run(capsys, "run", path, "--simulate")
    assert status == 1
    assert _leaks(out + err) == []
    assert "error: something said ********" in err.splitlines()
    assert "a note with ********" in err.splitlines()
    assert "a summary cell with ********" in out.splitlines()


def _secret_pipeline(tmp_path: Path) -> str:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "deploy.key").write_text("\n".join(KEY_LINES) + "\n")
    return pipeline_file(
        tmp_path,
        "secrets:\n"
        "  token: {from_env: BR_TEST_TOKEN}\n"
        "  key: {from_file: keys/deploy.key}\n"
        "steps:\n"
        "  - name: check\n"
        "    image: busybox\n"
        "    secrets: [token, {source: key, target: KEY}]\n"
        "    commands:\n"
        '      - echo "token=$token"\n'
        '      - printf "%s\\n" "$KEY"\n'
        '      - printf "%s" "$token" | wc -c\n'
        "  - name: leaky\n"
        "    image: busybox\n"
        "    environment: {T: {from_secret: token}}\n"
        "    commands: ['echo \"about to fail with $T\" >&2', 'exit 3']\n"
        "  - name: after\n"
        "    image: busybox\n"
        "    commands: ['echo never']\n",
    )


def test_a_step_that_echoes_its_secret_and_fails_shows_no_value(tmp_path: Path) -> None:
    path = _secret_pipeline(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "buildruntime", "run", path, "--simulate"],
        cwd=tmp_path.parent,  # from_file is relative to the pipeline, not to here
        capture_output=True,
        text=True,
        timeout=60,
        env={**_env(), "BR_TEST_TOKEN": TOKEN},
    )
    assert done.returncode == 3, done.stderr
    assert logs(done.stdout) == [
        "[check] token=********",
        "[check] ********",
        "[check] ********",
        "[check] 14",
        "[leaky] about to fail with ********",
    ]
    assert _leaks(done.stdout + done.stderr) == []
    rows = table(done.stdout)
    assert (rows["leaky"]["RESULT"], rows["leaky"]["EXIT"]) == ("failed", "3")
    assert rows["after"]["RESULT"] == "skipped"
    assert done.stderr.splitlines() == ["[leaky] failed: exit code 3 (APP_ERROR: Error)"]


def test_a_service_that_prints_its_secret_and_dies_shows_no_value(tmp_path: Path) -> None:
    # Its error quotes its last lines: the library masks them, the command again.
    path = pipeline_file(
        tmp_path,
        "secrets: {token: {from_env: BR_TEST_TOKEN}}\n"
        "services:\n"
        "  - name: db\n    image: busybox\n    ports: [5432]\n    secrets: [token]\n"
        "    commands: ['echo \"bad password $token\" >&2', 'exit 4']\n"
        "steps: [{name: test, image: busybox, commands: ['echo never']}]\n",
    )
    done = subprocess.run(
        [sys.executable, "-m", "buildruntime", "run", path, "--simulate"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_env(), "BR_TEST_TOKEN": TOKEN},
    )
    assert done.returncode == 1, done.stderr
    assert _leaks(done.stdout + done.stderr) == []
    assert "[db] bad password ********" in logs(done.stdout)
    (error,) = done.stderr.splitlines()
    assert "last lines: bad password ********" in error


@pytest.mark.parametrize(
    ("secrets", "words"),
    [
        (
            "{token: {from_env: BR_TEST_UNSET}}",
            "secrets.token.from_env: the environment variable BR_TEST_UNSET is not set",
        ),
        (
            "{token: {from_env: BR_TEST_EMPTY}}",
            "secrets.token.from_env: the environment variable BR_TEST_EMPTY is empty",
        ),
        ("{token: {from_file: nowhere.key}}", "secrets.token.from_file: nowhere.key ("),
        ("{token: {from_file: nowhere.key}}", "nowhere.key): no such file"),
        (f"{{token: {TOKEN}}}", "secrets.token: is a string written in the pipeline file"),
        (f"{{token: {{value: {TOKEN}}}}}", "allow_literal_secrets: true at the top level"),
    ],
)
def test_a_secret_that_cannot_be_read_is_bad_input_naming_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    secrets: str,
    words: str,
) -> None:
    monkeypatch.delenv("BR_TEST_UNSET", raising=False)
    monkeypatch.setenv("BR_TEST_EMPTY", "")
    path = pipeline_file(
        tmp_path, f"secrets: {secrets}\nsteps: [{{name: a, image: busybox, secrets: [token]}}]\n"
    )
    status, out, err = run(capsys, "run", path, "--simulate")
    assert status == 2
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"error: {path}: "), line
    assert words in line
    assert TOKEN not in line


def test_an_unreadable_secret_file_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "key").mkdir()
    path = pipeline_file(
        tmp_path, "secrets: {k: {from_file: key}}\nsteps: [{name: a, image: busybox}]\n"
    )
    status, _, err = run(capsys, "run", path, "--simulate")
    assert status == 2
    assert err.splitlines() == [
        f"error: {path}: secrets.k.from_file: key ({tmp_path / 'key'}): is a directory, not a file"
    ]


def test_a_literal_secret_runs_once_the_file_insists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = pipeline_file(
        tmp_path,
        f"allow_literal_secrets: true\nsecrets: {{token: {{value: '{TOKEN}'}}}}\n"
        "steps: [{name: a, image: busybox, secrets: [token], commands: ['echo $token']}]\n",
    )
    status, out, err = run(capsys, "run", path, "--simulate")
    assert status == 0, err
    assert logs(out) == ["[a] ********"]
    assert TOKEN not in out + err


def test_registries_and_policy_fields_reach_the_pod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[Any] = []
    import buildruntime.cli.run as run_module

    real_run_build = run_module.run_build

    async def recording_run_build(rt: Runtime, plan: Any, console: Console, **kw: Any) -> int:
        seen.append(plan.spec)
        return await real_run_build(rt, plan, console, **kw)

    monkeypatch.setattr(run_module, "run_build", recording_run_build)
    monkeypatch.setenv("BR_TEST_TOKEN", TOKEN)
    path = pipeline_file(
        tmp_path,
        "image_pull_secrets: [corp-pull]\n"
        "registries: {registry.example.com: {username: ci, password: {from_env: BR_TEST_TOKEN}}}\n"
        "tolerations: [{key: ci, operator: Exists, effect: NoSchedule}]\n"
        "security_context: {runAsNonRoot: true}\n"
        "dns_policy: ClusterFirst\n"
        "steps: [{name: a, image: busybox, privileged: true, commands: ['echo ok'],\n"
        "         security_context: {runAsUser: 1000}}]\n",
    )
    status, out, err = run(capsys, "run", path, "--simulate")
    assert status == 0, err
    assert logs(out) == ["[a] ok"]
    (spec,) = seen
    assert spec.image_pull_secrets == ("corp-pull",)
    assert spec.registries["registry.example.com"].secret.reveal() == TOKEN
    assert spec.tolerations == [{"key": "ci", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec.steps[0].security_context == {"runAsUser": 1000}
    assert TOKEN not in out + err


def test_a_pod_override_of_a_steps_image_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = pipeline_file(
        tmp_path,
        "pod_overrides: {spec: {containers: [{name: a, image: alpine}]}}\n"
        "steps: [{name: a, image: busybox, commands: ['echo hi']}]\n",
    )
    status, out, err = run(capsys, "run", path, "--simulate")
    assert status == 2
    assert out == ""
    assert err.splitlines() == [
        f"error: {path}: pod_overrides: must not change the image of step a's container"
    ]


def test_the_secrets_example_runs_given_its_variable() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "buildruntime", "run", "examples/secrets.yaml", "--simulate"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**_env(), "DEPLOY_TOKEN": TOKEN},
    )
    assert done.returncode == 0, done.stderr
    assert logs(done.stdout) == [
        "[check] the token is ********",
        "[check] 14",
        "[deploy] deploying to staging with token ********",
        "[notify] Authorization: Bearer ********",
    ]
    assert TOKEN not in done.stdout + done.stderr
    without = subprocess.run(
        [sys.executable, "-m", "buildruntime", "run", "examples/secrets.yaml", "--simulate"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in _env().items() if k != "DEPLOY_TOKEN"},
    )
    assert without.returncode == 2
    assert without.stderr.splitlines() == [
        "error: examples/secrets.yaml: secrets.deploy_token.from_env: the environment "
        "variable DEPLOY_TOKEN is not set"
    ]


def test_run_help_documents_secrets_registries_and_the_policy_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, _ = run(capsys, "run", "--help")
    assert status == 0
    epilog = out[out.index("pipeline file keys:") :]
    for key in (
        "secrets",
        "allow_literal_secrets",
        "image_pull_secrets",
        "registries",
        "tolerations",
        "affinity",
        "runtime_class_name",
        "priority_class_name",
        "security_context",
        "dns_config",
        "dns_policy",
        "pod_overrides",
        "privileged",
    ):
        assert re.search(rf"^  {key}(\s|$)", epilog, re.MULTILINE), key
    # secrets and security_context are top-level keys and step keys: listed twice.
    assert len(re.findall(r"^  secrets\s", epilog, re.MULTILINE)) == 2
    assert len(re.findall(r"^  security_context\s", epilog, re.MULTILINE)) == 2
    flat = " ".join(epilog.split())
    for words in (
        "{from_env: VAR} (the variable must be set and not empty)",
        "relative to the pipeline file's directory",
        "one trailing newline stripped",
        "refused unless allow_literal_secrets: true",
        "{source: NAME, target: VAR}",
        "{secret: SECRET, key: KEY, target: VAR}",
        "{VAR: {from_secret: NAME}}",
        "shown as ********",
        "examples/secrets.yaml",
    ):
        assert words in flat, words
    assert [line for line in epilog.splitlines() if len(line) > 80] == []


def test_gc_reports_each_dead_workers_lease_and_the_pods_that_go_with_it() -> None:
    from datetime import UTC, datetime, timedelta

    from buildruntime.cli.gc import reap_and_report
    from buildruntime.workers import lease_name, micro_time, owner_reference, render_lease

    out, err = io.StringIO(), io.StringIO()
    console = Console(out, err, colour=False)

    async def main() -> int:
        async with FakeCluster(images={"busybox"}) as cluster:
            # What a worker killed an hour ago left: its Lease and a build pod it owns.
            dead = render_lease("gone-worker", "ci", 30)
            dead["spec"]["renewTime"] = micro_time(datetime.now(UTC) - timedelta(hours=1))
            lease = await cluster.create_lease("ci", dead)
            labels = {
                "app.kubernetes.io/managed-by": "buildruntime",
                "buildruntime.io/worker": "gone-worker",
            }
            await cluster.create_pod(
                "ci",
                {
                    "metadata": {
                        "name": "gc-1",
                        "labels": labels,
                        "ownerReferences": [owner_reference(lease)],
                    },
                    "spec": {"containers": [{"name": "s", "image": "busybox"}]},
                },
            )
            await cluster.create_lease("ci", render_lease("alive-worker", "ci", 30))
            reaped = await reap_and_report(cluster, "ci", 30.0, console)
            assert cluster.lease("ci", lease_name("gone-worker")) is None
            assert cluster.lease("ci", lease_name("alive-worker")) is not None
            return reaped

    assert anyio.run(main) == 1
    console.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == (
        "removed Lease buildruntime-worker-gone-worker of worker gone-worker "
        "(unrenewed for 3600 s); its pods go with it: gc-1"
    )
    assert lines[1] == "1 dead worker reaped in ci"
