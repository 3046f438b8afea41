"""Kubernetes resource quantities (``500m``, ``64Mi``, ``1.5Gi``, ``2``, ``1e3``): the one
grammar specs are checked against, and their value."""

from __future__ import annotations

import re
from decimal import Decimal

QUANTITY = re.compile(
    r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$"
)

_SUFFIXES = {
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: Decimal(1000) ** (i + 1) for i, s in enumerate(("k", "M", "G", "T", "P", "E"))},
    "m": Decimal("0.001"),
    "u": Decimal("0.000001"),
    "n": Decimal("0.000000001"),
}


def parse_quantity(text: str) -> Decimal:
    """The value of a quantity; :class:`ValueError` for text that is not one."""
    match = QUANTITY.match(text.strip())
    if match is None:
        raise ValueError(f"not a quantity: {text!r}")
    number, suffix = Decimal(match.group(1)), match.group(2) or ""
    if suffix[:1] in ("e", "E") and suffix[1:]:
        return number * Decimal(10) ** int(suffix[1:])
    return number * _SUFFIXES.get(suffix, Decimal(1))
