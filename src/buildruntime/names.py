"""Kubernetes' rules for the names of objects: DNS-1123 labels (containers, volumes, the
build id) and DNS-1123 subdomains (Secrets, claims, service accounts)."""

from __future__ import annotations

import re

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def dns1123_label_problem(value: object) -> str | None:
    """Why ``value`` is not a DNS-1123 label (Kubernetes' rule for names), or None."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if not value:
        return "must not be empty"
    if len(value) > 63:
        return f"{value!r} is longer than 63 characters"
    if not DNS1123_LABEL.match(value):
        return (
            f"{value!r} is not a DNS-1123 label (lowercase letters, digits and '-', "
            "starting and ending with a letter or digit)"
        )
    return None
