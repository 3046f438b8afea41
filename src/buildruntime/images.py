"""Image references: validation and the normal form the kubelet reports.

A container status names its image in normal form (``alpine`` is reported as
``docker.io/library/alpine:latest``), so the runtime compares images only after
normalising both sides.
"""

from __future__ import annotations

import re

from buildruntime.informer.image_names import (
    COMPONENT,
    REFERENCE,
    is_registry,
    normalize_image,
    same_image,
)

DEFAULT_PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


def image_problem(reference: str) -> str | None:
    """Why ``reference`` is not a valid image reference, or None when it is."""
    if not reference:
        return "must not be empty"
    if reference != reference.strip() or any(c.isspace() for c in reference):
        return "must not contain whitespace"
    if len(reference) > 4096:
        return "is longer than 4096 characters"
    match = REFERENCE.match(reference)
    domain = match.group("domain") if match else None
    if domain is not None and not is_registry(domain) and not re.fullmatch(COMPONENT, domain):
        # Docker's rule: a first component without '.', ':' or "localhost" is part of
        # the repository path, and paths are lowercase.
        match = None
    if not match:
        return (
            f"{reference!r} is not a valid image reference "
            "(expected [registry/]name[:tag][@digest], name in lowercase)"
        )
    return None


__all__ = ["DEFAULT_PAUSE_IMAGE", "image_problem", "normalize_image", "same_image"]
