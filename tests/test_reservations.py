"""The pod's requests are the build's peak: the largest step holds each resource."""

from __future__ import annotations

from buildruntime.reservations import shared_requests


def test_the_largest_step_holds_each_resource_and_the_others_ask_for_zero() -> None:
    rendered = shared_requests(
        [
            ("a", {"requests": {"cpu": "500m", "memory": "1Gi"}}, False),
            ("b", {"requests": {"cpu": "2"}, "limits": {"cpu": "2", "memory": "256Mi"}}, False),
            ("c", None, False),
            ("db", {"requests": {"cpu": "1", "memory": "512Mi"}}, True),
        ]
    )
    # a holds memory (1Gi > b's 256Mi, a request that defaults to b's limit); b holds cpu.
    assert rendered["a"] == {"requests": {"cpu": "0", "memory": "1Gi"}}
    assert rendered["b"] == {
        "requests": {"cpu": "2", "memory": "0"},
        "limits": {"cpu": "2", "memory": "256Mi"},
    }
    assert "c" not in rendered  # declares nothing: asks for nothing already
    # A service runs beside the steps: its requests add up, unchanged.
    assert rendered["db"] == {"requests": {"cpu": "1", "memory": "512Mi"}}


def test_a_limit_alone_is_a_request_and_can_hold_the_reservation() -> None:
    rendered = shared_requests(
        [("a", {"limits": {"cpu": "1"}}, False), ("b", {"limits": {"cpu": "3"}}, False)]
    )
    assert rendered["a"] == {"limits": {"cpu": "1"}, "requests": {"cpu": "0"}}
    assert rendered["b"] == {"limits": {"cpu": "3"}}
