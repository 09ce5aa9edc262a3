"""Kubernetes resource quantities (``250m``, ``1Gi``, ``1e3``) as exact decimals.

The emulator's own small parser rather than the product's ``rsolv_staging.quantities``: the
emulator stands alone, and admission needs every suffix the API server accepts (counts,
storage, exponents), not only the CPU and memory forms the product writes.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_SUFFIXES = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
_QUANTITY = re.compile(
    r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?$"
)
_BINARY = (("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10))


def parse(value: object) -> Decimal:
    """The quantity's value; raises ValueError for text the API server would refuse."""
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"quantities must match the regular expression {_QUANTITY.pattern!r}")
    try:
        number = Decimal(match[1])
        return number * Decimal(f"1{match[2]}") if match[2] else number * _SUFFIXES[match[3] or ""]
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a quantity") from None


def format_quantity(value: Decimal, resource: str) -> str:
    """A value written the way the API server prints it in its messages (``2Gi``, ``500m``)."""
    if "cpu" in resource:
        return str(int(value)) if value == value.to_integral_value() else f"{int(value * 1000)}m"
    if value != value.to_integral_value():
        return f"{int(value * 1000)}m"
    whole = int(value)
    for suffix, factor in _BINARY:
        if whole and whole % factor == 0:
            return f"{whole // factor}{suffix}"
    return str(whole)
