"""The blocking facade: the same pipeline, results and errors, with no thread left over."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from buildruntime import BuildSpec, Failure, ImagePullError, SpecError, UsageError
from buildruntime import sync as bsync
from buildruntime.testing import FakeCluster

from .conftest import FAST_RECOVERY, IMAGES, step


def _settle(before: int, within: float = 5.0) -> int:
    """The thread count once it is back to ``before`` (or after ``within`` seconds)."""
    deadline = time.monotonic() + within
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    return threading.active_count()


@pytest.fixture
def threads_before() -> Iterator[int]:
    before = threading.active_count()
    yield before
    assert _settle(before) == before, [t.name for t in threading.enumerate()]


def _runtime(**settings: object) -> bsync.Runtime:
    return bsync.Runtime(
        FakeCluster(images=IMAGES),
        namespace="ci",
        reflector=FAST_RECOVERY,
        owns_cluster=True,
        **settings,
    )


def test_two_step_pipeline(threads_before: int) -> None:
    spec = BuildSpec(
        build_id="sync-1",
        steps=[
            step("one", "echo first", "printf 'no newline'"),
            step("two", "echo oops >&2", "exit 3"),
        ],
    )
    with _runtime() as rt:
        events = rt.events()
        build = rt.setup_build(spec)
        assert build.build_id == "sync-1"
        assert build.pod_name == "sync-1"
        assert build.pod_manifest["metadata"]["name"] == "sync-1"
        rt.assemble_build(build)
        got = {}
        for s in spec.steps:
            rt.run_container(build, s.name)
            lines = list(rt.tail_container(build, s.name))
            result = rt.wait_container(build, s.name)
            got[s.name] = (lines, result.exit_code, result.failure, result.state)
        assert rt.inspect_container(build, "one").exit_code == 0
        build_events = build.events()
        rt.remove_build(build)
        kinds = [(e.step, e.kind) for e in build_events]
    assert got == {
        "one": ([b"first", b"no newline"], 0, None, "terminated"),
        "two": ([b"oops"], 3, Failure.APP_ERROR, "terminated"),
    }
    assert kinds[0] == (None, "scheduled")
    assert kinds[-1] == (None, "deleted")
    assert ("one", "started") in kinds
    assert ("one", "completed") in kinds
    assert ("two", "failed") in kinds
    # The runtime-wide stream ended with the runtime and saw the same events.
    assert [(e.step, e.kind) for e in events] == kinds


def test_image_pull_error_comes_through_unchanged(threads_before: int) -> None:
    spec = BuildSpec(build_id="sync-pull", steps=[step("gone", "true", image="nope/never:1")])
    with _runtime() as rt:
        build = rt.setup_build(spec)
        rt.assemble_build(build)
        with pytest.raises(ImagePullError) as info:
            rt.run_container(build, "gone")
        assert info.value.build_id == "sync-pull"
        assert info.value.step == "gone"
        assert rt.wait_container(build, "gone").failure is Failure.IMAGE_PULL
        assert list(rt.tail_container(build, "gone")) == []


def test_spec_errors_raise_at_the_call(threads_before: int) -> None:
    with _runtime() as rt:
        build = rt.setup_build(BuildSpec(build_id="sync-spec", steps=[step("a", "true")]))
        with pytest.raises(SpecError, match="no step 'b'"):
            rt.tail_container(build, "b")
        with pytest.raises(UsageError, match="not assembled"):
            rt.run_container(build, "a")
    with pytest.raises(RuntimeError, match="context manager"):
        rt.setup_build(BuildSpec(build_id="x", steps=[step("a", "true")]))


def test_bad_settings_raise_at_construction(threads_before: int) -> None:
    """As the async Runtime does: before any loop or thread is started."""
    with pytest.raises(SpecError, match="schedule_timeout"):
        _runtime(schedule_timeout=-1)


def test_leaving_a_tail_early_closes_it(threads_before: int) -> None:
    spec = BuildSpec(build_id="sync-early", steps=[step("many", "seq 1 30000")])
    with _runtime() as rt:
        build = rt.setup_build(spec)
        rt.assemble_build(build)
        rt.run_container(build, "many")
        first = []
        for line in rt.tail_container(build, "many"):
            first.append(line)
            if len(first) == 3:
                break
        assert first == [b"1", b"2", b"3"]
        # A second tail still starts at line one and reads all of them, past the
        # pump's high-water mark.
        with rt.tail_container(build, "many") as tail:
            assert sum(1 for _ in tail) == 30000
        assert rt.wait_container(build, "many").exit_code == 0
        # An iterator still open when the runtime exits just ends.
        left_open = rt.tail_container(build, "many")
        assert next(left_open) == b"1"
        assert not rt._pumps or all(not p.done.is_set() for p in rt._pumps)
    # It gives what its pump had read ahead (it stopped at its high-water mark, as
    # nobody read past line 1), in order, then ends: not the rest of the log.
    rest = list(left_open)
    assert rest == [str(i).encode() for i in range(2, len(rest) + 2)]
    assert len(rest) < 29999, len(rest)
    assert not rt._pumps


def test_build_left_in_place_is_removed_on_exit(threads_before: int) -> None:
    cluster = FakeCluster(images=IMAGES)
    with bsync.Runtime(cluster, namespace="ci", reflector=FAST_RECOVERY, owns_cluster=True) as rt:
        build = rt.setup_build(BuildSpec(build_id="sync-left", steps=[step("a", "echo hi")]))
        rt.assemble_build(build)
        rt.run_container(build, "a")
        events = build.events()
    assert "deleted" in [e.kind for e in events]


def _raise_inside(error: BaseException, *, backend: str) -> None:
    with bsync.Runtime(FakeCluster(images=IMAGES), namespace="ci", backend=backend):
        raise error


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_errors_leave_the_with_block_as_themselves(threads_before: int, backend: str) -> None:
    """An executor's `except ImagePullError:` around the block matches: no group."""
    own = ValueError("the executor's own")
    with pytest.raises(ValueError, match="the executor's own") as info:
        _raise_inside(own, backend=backend)
    assert info.value is own
    spec = BuildSpec(build_id="sync-raise", steps=[step("gone", "true", image="nope/never:1")])

    def executor() -> None:
        with _runtime(backend=backend) as rt:
            build = rt.setup_build(spec)
            rt.assemble_build(build)
            try:
                rt.run_container(build, "gone")
            finally:
                rt.remove_build(build)

    with pytest.raises(ImagePullError) as pulled:
        executor()
    assert type(pulled.value) is ImagePullError
    assert pulled.value.step == "gone"
