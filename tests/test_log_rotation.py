"""Log rotation on the node: what ``tail_container`` shows when the kubelet rotates a
step's log file while it is being read.

The kubelet serves only the current file; a follow stream that was behind at the
rotation reads the old file to its end and then ends (the container stopped) or goes
silent. FakeCluster does the same (``rotate_log``); ``faults.slow_logs`` holds streams
back so that they are behind, as a real kubelet is on a burst.
"""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import pytest

from buildruntime import Build, BuildSpec, Runtime
from buildruntime.testing import FakeCluster

from .conftest import step

pytestmark = pytest.mark.anyio

PAD = "x" * 80


def lines(prefix: str, count: int) -> list[bytes]:
    """What ``seq -f`` prints in :func:`printing`."""
    return [f"{prefix}{i:06d}-{PAD}".encode() for i in range(1, count + 1)]


def printing(prefix: str, count: int) -> str:
    return f"seq -f '{prefix}%06g-{PAD}' 1 {count}"


def handshake(directory: Path, name: str) -> str:
    """Shell lines: say ``name`` is done, then wait for ``go-<name>``."""
    return f"touch {directory}/{name}; while [ ! -e {directory}/go-{name} ]; do sleep 0.01; done"


async def wait_for(path: Path) -> None:
    with anyio.fail_after(10):
        while not await anyio.Path(path).exists():
            await anyio.sleep(0.01)


class Tail:
    """``tail_container`` read in the background, as an executor streams a step."""

    def __init__(self, runtime: Runtime, build: Build) -> None:
        self.lines: list[bytes] = []
        self._runtime, self._build = runtime, build

    async def run(self) -> None:
        async for line in self._runtime.tail_container(self._build, "s"):
            self.lines.append(line)

    async def reached(self, count: int) -> None:
        with anyio.fail_after(10):
            while len(self.lines) < count:
                await anyio.sleep(0.01)


async def start(runtime: Runtime, build_id: str, *commands: str) -> Build:
    build = await runtime.setup_build(BuildSpec(build_id=build_id, steps=[step("s", *commands)]))
    await runtime.assemble_build(build)
    await runtime.run_container(build, "s")
    return build


async def test_a_burst_the_reader_was_behind_on_arrives_whole_after_a_rotation(
    runtime: Runtime, cluster: FakeCluster, tmp_path: Path
) -> None:
    # 1.4 MB before the rotation (more than a log needs to be rotated at all), then more
    # in the new file. The capture's stream is held back from the start, so, as on a
    # real node under a burst, it never reached the end of the first file before the
    # rotation: it reads that file to its end and ends, since the step has exited.
    cluster.faults.slow_logs(0)
    build = await start(
        runtime,
        "rotate-burst",
        printing("a", 12_000),
        handshake(tmp_path, "a"),
        printing("b", 3_000),
    )
    await wait_for(tmp_path / "a")
    cluster.rotate_log("ci", build.pod_name, "s")
    await anyio.Path(tmp_path / "go-a").touch()
    assert (await runtime.wait_container(build, "s")).exit_code == 0
    cluster.faults.clear()

    got = [line async for line in runtime.tail_container(build, "s")]
    assert got == lines("a", 12_000) + lines("b", 3_000)
    # The follow stream, then one read of the current file once the step had ended.
    assert sum(1 for r in cluster.requests if r.verb == "log") == 2
    await runtime.remove_build(build)


async def test_a_stream_that_caught_up_follows_the_rotation_with_one_request(
    runtime: Runtime, cluster: FakeCluster, tmp_path: Path
) -> None:
    # The stream had reached the end of the file when the node rotated it: it reopens
    # the new file by itself, and a small log gets no read after its end.
    build = await start(
        runtime, "rotate-small", printing("a", 50), handshake(tmp_path, "a"), printing("b", 50)
    )
    tail = Tail(runtime, build)
    async with anyio.create_task_group() as tg:
        tg.start_soon(tail.run)
        await tail.reached(50)
        cluster.rotate_log("ci", build.pod_name, "s")
        await anyio.Path(tmp_path / "go-a").touch()
    assert tail.lines == lines("a", 50) + lines("b", 50)
    assert sum(1 for r in cluster.requests if r.verb == "log") == 1
    await runtime.remove_build(build)


async def test_a_resume_from_the_new_file_delivers_every_line_once(
    runtime: Runtime, cluster: FakeCluster, tmp_path: Path
) -> None:
    # a.. in the first file, b.. and c.. in the second; the stream is cut after b..:
    # the resume reads from the second of the last line delivered, and the new file does
    # not hold the lines of that second that were in the old one.
    build = await start(
        runtime,
        "rotate-resume",
        printing("a", 200),
        handshake(tmp_path, "a"),
        printing("b", 200),
        handshake(tmp_path, "b"),
        printing("c", 200),
    )
    tail = Tail(runtime, build)
    async with anyio.create_task_group() as tg:
        tg.start_soon(tail.run)
        await tail.reached(200)
        cluster.rotate_log("ci", build.pod_name, "s")
        await anyio.Path(tmp_path / "go-a").touch()
        await tail.reached(400)
        cluster.faults.cut_logs()
        await anyio.Path(tmp_path / "go-b").touch()
    assert tail.lines == lines("a", 200) + lines("b", 200) + lines("c", 200)
    assert sum(1 for r in cluster.requests if r.verb == "log") == 2
    await runtime.remove_build(build)


MISSING = re.compile(
    rb"\[buildruntime\] log lines written after (\S+) and before (\S+) are missing: "
    rb"the node rotated the log file that held them before they were read"
)


async def test_lines_rotated_away_before_a_resume_are_shown_missing(
    runtime: Runtime, cluster: FakeCluster, tmp_path: Path
) -> None:
    # The stream is behind (a slow kubelet) when it is cut; before the resume the node
    # rotates the file, so the rest of a.. is only in a rotated file, which no request
    # reads. The tail says so where the lines are missing, then goes on with b...
    cluster.faults.slow_logs(100_000)
    build = await start(
        runtime,
        "rotate-lost",
        printing("a", 4_000),
        handshake(tmp_path, "a"),
        printing("b", 100),
    )
    tail = Tail(runtime, build)
    async with anyio.create_task_group() as tg:
        tg.start_soon(tail.run)
        await wait_for(tmp_path / "a")
        await tail.reached(100)
        cluster.rotate_log("ci", build.pod_name, "s")
        cluster.faults.cut_logs()
        cluster.faults.clear()
        await anyio.Path(tmp_path / "go-a").touch()

    marker = next(i for i, line in enumerate(tail.lines) if line.startswith(b"[buildruntime]"))
    read, notice, after = tail.lines[:marker], tail.lines[marker], tail.lines[marker + 1 :]
    assert 100 <= len(read) < 4_000
    assert read == lines("a", len(read))
    assert after == lines("b", 100)
    match = MISSING.fullmatch(notice)
    assert match is not None, notice
    assert match.group(1) < match.group(2)
    await runtime.remove_build(build)


async def test_a_stream_left_waiting_at_the_end_of_a_rotated_file_is_read_again(
    runtime: Runtime, cluster: FakeCluster, tmp_path: Path
) -> None:
    # The stream was behind at the rotation, so after the old file it waits while the
    # step goes on in the new one; at the next rotation the kubelet's stream would jump
    # to the newest file, past b... A new read after a second of silence gets b.. live.
    cluster.faults.slow_logs(0)
    build = await start(
        runtime,
        "rotate-stall",
        printing("a", 12_000),
        handshake(tmp_path, "a"),
        printing("b", 100),
        handshake(tmp_path, "b"),
        printing("c", 100),
    )
    tail = Tail(runtime, build)
    async with anyio.create_task_group() as tg:
        tg.start_soon(tail.run)
        await wait_for(tmp_path / "a")
        cluster.rotate_log("ci", build.pod_name, "s")
        await anyio.Path(tmp_path / "go-a").touch()
        await wait_for(tmp_path / "b")
        cluster.faults.clear()
        await tail.reached(12_100)
        assert tail.lines == lines("a", 12_000) + lines("b", 100)
        cluster.rotate_log("ci", build.pod_name, "s")
        await anyio.Path(tmp_path / "go-b").touch()
    assert tail.lines == lines("a", 12_000) + lines("b", 100) + lines("c", 100)
    # The stream, the read after its silence, the read after the step ended.
    assert sum(1 for r in cluster.requests if r.verb == "log") == 3
    await runtime.remove_build(build)


async def test_a_file_the_kubelet_reopens_twice_is_delivered_once(
    runtime: Runtime, cluster: FakeCluster, tmp_path: Path
) -> None:
    # The stream catches up (so the kubelet watches the log directory), then falls
    # behind while the node rotates twice: at the end of the old file the kubelet
    # reopens the current file once for each rotation it was told of, so the newest
    # file comes twice in one live stream. Here the file in between stayed empty, so
    # nothing is lost either: every line arrives exactly once.
    build = await start(
        runtime,
        "rotate-twice",
        printing("a", 50),
        handshake(tmp_path, "a"),
        printing("b", 100),
        handshake(tmp_path, "b"),
        printing("c", 100),
        handshake(tmp_path, "c"),
        printing("d", 10),
    )
    tail = Tail(runtime, build)
    async with anyio.create_task_group() as tg:
        tg.start_soon(tail.run)
        await tail.reached(50)
        cluster.faults.slow_logs(0)
        await anyio.Path(tmp_path / "go-a").touch()
        await wait_for(tmp_path / "b")
        cluster.rotate_log("ci", build.pod_name, "s")
        cluster.rotate_log("ci", build.pod_name, "s")
        await anyio.Path(tmp_path / "go-b").touch()
        await wait_for(tmp_path / "c")
        cluster.faults.clear()
        await tail.reached(250)
        await anyio.Path(tmp_path / "go-c").touch()
    assert tail.lines == lines("a", 50) + lines("b", 100) + lines("c", 100) + lines("d", 10)
    assert sum(1 for r in cluster.requests if r.verb == "log") == 1
    await runtime.remove_build(build)
