"""The command line, in process (``cli.main``) and once as ``python -m buildruntime``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buildruntime import cli

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
    assert all(re.fullmatch(r"\d+\.\d+s", r[3]) for r in rows.values())
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
    assert rows["test"][4] == "APP_ERROR: Error"
    assert rows["publish"] == ["publish", "skipped", "-", "-"]
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
    assert rows["compile"][4].startswith("IMAGE_PULL")
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
