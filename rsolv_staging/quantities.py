"""Kubernetes resource quantities (CPU and memory) as exact numbers.

Staging's resources are derived from production's by arithmetic, so quantities are
parsed into exact integers (millicores, bytes) rather than compared as strings, and
formatted back in the unit a person would write (``250m``, ``512Mi``).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_CPU = re.compile(r"^(?P<num>\d+(\.\d+)?)(?P<unit>m?)$")
_MEMORY = re.compile(r"^(?P<num>\d+(\.\d+)?)(?P<unit>Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$")

_MEMORY_FACTORS = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
}


def parse_cpu(value: str) -> int:
    """Return a CPU quantity (``"500m"``, ``"0.5"``, ``"2"``) in millicores.

    Raises:
        ValueError: the text is not a CPU quantity Kubernetes accepts, or is below 1m.
    """
    match = _CPU.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a CPU quantity (examples: '250m', '0.5', '2')")
    number = Decimal(match["num"])
    millis = number if match["unit"] == "m" else number * 1000
    if millis != millis.to_integral_value() or millis < 1:
        raise ValueError(f"{value!r} is not a whole number of millicores (at least 1m)")
    return int(millis)


def parse_memory(value: str) -> int:
    """Return a memory quantity (``"1Gi"``, ``"512Mi"``, ``"1G"``) in bytes.

    Raises:
        ValueError: the text is not a memory quantity Kubernetes accepts, or is zero.
    """
    match = _MEMORY.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a memory quantity (examples: '512Mi', '1Gi')")
    try:
        size = Decimal(match["num"]) * _MEMORY_FACTORS[match["unit"] or ""]
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only numbers
        raise ValueError(f"{value!r} is not a memory quantity") from exc
    if size != size.to_integral_value() or size < 1:
        raise ValueError(f"{value!r} is not a whole number of bytes (at least 1)")
    return int(size)


def format_cpu(millicores: int) -> str:
    """Format millicores the way manifests usually spell them (``2``, ``250m``)."""
    if millicores % 1000 == 0:
        return str(millicores // 1000)
    return f"{millicores}m"


def format_memory(size: int) -> str:
    """Format bytes in the largest binary unit that divides them exactly."""
    for unit in ("Pi", "Ti", "Gi", "Mi", "Ki"):
        factor = _MEMORY_FACTORS[unit]
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)
