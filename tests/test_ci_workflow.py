"""The kind workflow cannot run here (no Docker): what can be checked of it offline,
beyond the schema scripts/test checks, is that its shell steps parse and that it uses
the files and image names the suite uses."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "kind.yml"


def _steps() -> list[dict[str, object]]:
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    return [step for job in jobs.values() for step in job["steps"]]


def _versions() -> dict[str, str]:
    text = (ROOT / "integration" / "cluster" / "versions.sh").read_text()
    return dict(re.findall(r'^([A-Z_0-9]+)="?([^"\n]*)"?$', text, re.MULTILINE))


def test_every_shell_step_parses() -> None:
    scripts = [str(step["run"]) for step in _steps() if "run" in step]
    assert len(scripts) >= 5
    for script in scripts:
        checked = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
        assert checked.returncode == 0, (script, checked.stderr)


def test_it_uses_the_repository_s_kind_config_and_the_suite_s_image_names() -> None:
    text = WORKFLOW.read_text()
    assert "--config kind-config.yaml" in text
    assert (ROOT / "kind-config.yaml").is_file()
    assert "source integration/cluster/versions.sh" in text
    env = yaml.safe_load(text)["jobs"]["integration"]["env"]
    assert env["BUILDRUNTIME_TARGET"] == "cluster"
    versions = _versions()
    assert env["BUILDRUNTIME_PAUSE_IMAGE"] == versions["PAUSE_IMAGE"]
    for name in ("PAUSE_IMAGE", "PAUSE_ALIAS", "BUSYBOX_IMAGES", "PLACEHOLDER_IMAGE"):
        assert f"${name}" in text, name
    assert '"$ENTRYPOINT_IMAGE"' in text
    assert "deploy/placeholder" in text
    assert (ROOT / "deploy" / "placeholder" / "Dockerfile").is_file()
