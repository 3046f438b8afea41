"""Runtime settings: one typed object, the keywords as overrides, one home for each value."""

from __future__ import annotations

import pytest

from buildruntime import Runtime, RuntimeSettings, SpecError
from buildruntime.informer.reflector import ReflectorSettings
from buildruntime.testing import FakeCluster


def test_keywords_override_the_settings_object() -> None:
    base = RuntimeSettings(delete_timeout=5, schedule_timeout=7)
    rt = Runtime(FakeCluster(), "ci", base, delete_timeout=9, resync_period=42)
    assert rt.settings.delete_timeout == 9.0
    assert rt.settings.schedule_timeout == 7.0
    assert rt.settings.resync_period == 42.0
    assert rt.settings.reflector.resync_period == 42.0


def test_the_resync_period_has_one_home() -> None:
    own = ReflectorSettings(resync_period=10.0, backoff_max=2.0)
    rt = Runtime(FakeCluster(), "ci", reflector=own)
    assert rt.settings.resync_period == 10.0
    with pytest.raises(SpecError, match="resync_period: given twice"):
        Runtime(FakeCluster(), "ci", reflector=own, resync_period=20.0)
    same = Runtime(FakeCluster(), "ci", reflector=own, resync_period=10.0)
    assert same.settings.reflector.backoff_max == 2.0


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"delete_timeout": 0}, "delete_timeout"),
        ({"api_timeout": "soon"}, "api_timeout"),
        ({"resync_period": -1}, "resync_period"),
        ({"log_memory_limit": -1}, "log_memory_limit"),
        ({"pause_image": "not an image"}, "pause_image"),
        ({"placeholder_image": "not an image"}, "placeholder_image"),
        ({"placeholder_image": 3}, "placeholder_image"),
        ({"shared_event_watch": "yes"}, "shared_event_watch"),
        ({"shared_pod_watch": 1}, "shared_pod_watch"),
        ({"delete_timout": 3}, "delete_timout"),
    ],
)
def test_bad_settings_name_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError) as info:
        Runtime(FakeCluster(), "ci", **options)  # type: ignore[arg-type]
    assert info.value.field == field
