"""Image references: validation and the normal form the kubelet reports.

A container status names its image in normal form (``alpine`` is reported as
``docker.io/library/alpine:latest``), so the runtime compares images only after
normalising both sides.
"""

from __future__ import annotations

import functools
import re

DEFAULT_PAUSE_IMAGE = "registry.k8s.io/pause:3.10"

# The reference grammar of distribution/reference, reduced to what matters here:
# [domain[:port]/]path[:tag][@digest], path components lowercase.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_PART = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"(?:{_HOST_PART}(?:\.{_HOST_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)


def image_problem(reference: str) -> str | None:
    """Why ``reference`` is not a valid image reference, or None when it is."""
    if not reference:
        return "must not be empty"
    if reference != reference.strip() or any(c.isspace() for c in reference):
        return "must not contain whitespace"
    if len(reference) > 4096:
        return "is longer than 4096 characters"
    match = _REFERENCE.match(reference)
    domain = match.group("domain") if match else None
    if domain is not None and not _is_registry(domain) and not re.fullmatch(_COMPONENT, domain):
        # Docker's rule: a first component without '.', ':' or "localhost" is part of
        # the repository path, and paths are lowercase.
        match = None
    if not match:
        return (
            f"{reference!r} is not a valid image reference "
            "(expected [registry/]name[:tag][@digest], name in lowercase)"
        )
    return None


def _is_registry(first_component: str) -> bool:
    return "." in first_component or ":" in first_component or first_component == "localhost"


@functools.lru_cache(maxsize=4096)
def normalize_image(reference: str) -> str:
    """The fully qualified form a kubelet reports.

    ``busybox`` becomes ``docker.io/library/busybox:latest``.

    A reference that does not parse is returned unchanged.
    """
    match = _REFERENCE.match(reference)
    if match is None:
        return reference
    domain, path, tag, digest = match.group("domain", "path", "tag", "digest")
    first = reference.split("/", 1)[0]
    if domain is None or not _is_registry(first):
        # No registry given: the first component was part of the path (Docker's rule).
        path = f"{domain}/{path}" if domain else path
        domain = "docker.io"
        if "/" not in path:
            path = f"library/{path}"
    name = f"{domain}/{path}"
    if digest:
        return f"{name}:{tag}@{digest}" if tag else f"{name}@{digest}"
    return f"{name}:{tag or 'latest'}"


def same_image(a: str, b: str) -> bool:
    """Whether two references name the same image once normalised."""
    return normalize_image(a) == normalize_image(b)
