"""Image references as the kubelet reports them: the reference grammar and the normal
form (``alpine`` is reported as ``docker.io/library/alpine:latest``), so that images are
compared only after normalising both sides."""

from __future__ import annotations

import functools
import re

# The reference grammar of distribution/reference, reduced to what matters here:
# [domain[:port]/]path[:tag][@digest], path components lowercase.
COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_PART = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"(?:{_HOST_PART}(?:\.{_HOST_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
REFERENCE = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{COMPONENT}(?:/{COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)


def is_registry(first_component: str) -> bool:
    return "." in first_component or ":" in first_component or first_component == "localhost"


@functools.lru_cache(maxsize=4096)
def normalize_image(reference: str) -> str:
    """The fully qualified form a kubelet reports.

    ``busybox`` becomes ``docker.io/library/busybox:latest``.

    A reference that does not parse is returned unchanged.
    """
    match = REFERENCE.match(reference)
    if match is None:
        return reference
    domain, path, tag, digest = match.group("domain", "path", "tag", "digest")
    first = reference.split("/", 1)[0]
    if domain is None or not is_registry(first):
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
