"""The README's snippet that needs no cluster runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_the_fake_cluster_snippet_runs_and_prints_what_it_says() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    snippet = next(block for block in blocks if "FakeCluster(" in block)
    done = subprocess.run(
        [sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "[b'hi']"
    assert "exit_code=0" in lines[1]


BUILD_ON_THE_FAKE = """
import anyio
from buildruntime import BuildSpec, Runtime, StepSpec
from buildruntime.testing import FakeCluster

async def main() -> None:
    async with FakeCluster(images={"busybox"}) as cluster, Runtime(cluster, "ci") as rt:
        build = await rt.setup_build(
            BuildSpec(build_id="traced", steps=[StepSpec("s", "busybox", ["echo hi"])])
        )
        await rt.assemble_build(build)
        await rt.run_container(build, "s")
        await rt.wait_container(build, "s")
        await rt.remove_build(build)

anyio.run(main)
tracing.shutdown()
metrics.get_meter_provider().shutdown()
"""


def test_the_telemetry_snippet_exports_the_runtime_s_spans_and_metrics() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    snippet = next(block for block in blocks if "set_tracer_provider" in block)
    done = subprocess.run(
        [sys.executable, "-c", snippet + BUILD_ON_THE_FAKE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for name in ("buildruntime.build", "buildruntime.step", "buildruntime.log.lines"):
        assert f'"name": "{name}"' in done.stdout, name
