"""Pure: the durations the config is written in, and the sizes and shares a rule's memory conditions and its
host-pressure gate are written in.

A duration is Prometheus's: `500ms`, `30s`, `10m`, `1h30m`, `2d`, `1w`, or a plain number of seconds.

A size is a number and a unit: `512MB`, `2GiB`, `1.5GB`, `300 MB`, or a plain number of bytes. Decimal units (kB, MB,
GB, TB: powers of 1000) and binary ones (KiB, MiB, GiB, TiB: powers of 1024) mean what they say; the unit's case is
not significant except that `b` is not a bit (`512mb` is 512 MB). A share is a percentage of the server's memory:
`10%`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SIZE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)", re.IGNORECASE)
UNITS: dict[str, int] = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
"""The size units, lower-cased, in bytes."""
MAX_SIZE = 2**63 - 1


def parse_size(value: object) -> int:
    """Bytes from `512MB`, `2GiB`, `1.5GB`, or a plain non-negative number of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512MB, 2GiB or 1.5GB, got a boolean")
    if isinstance(value, int | float):
        number, unit = float(value), ""
    elif isinstance(value, str):
        found = _SIZE.fullmatch(value.strip())
        if found is None or found.group(2).lower() not in UNITS:
            raise ValueError(
                f"invalid size {value!r}: use a number and a unit, B, kB, MB, GB, TB (powers of 1000) or KiB, MiB, "
                "GiB, TiB (powers of 1024), e.g. 512MB, 2GiB, 1.5GB"
            )
        number, unit = float(found.group(1)), found.group(2).lower()
    else:
        raise ValueError(f"expected a size such as 512MB, 2GiB or 1.5GB, got {type(value).__name__}")
    size = number * UNITS[unit]
    if size != size or size < 0 or size > MAX_SIZE:
        raise ValueError(f"size must be between 0 and {MAX_SIZE} bytes, got {value!r}")
    return int(size)


def format_size(size: float) -> str:
    """A size for people: in the unit it was most likely written in (`300MB`, `2GiB`), else the largest binary unit
    it reaches (`1.5GiB`)."""
    for unit, factor in (("TiB", 1024**4), ("TB", 1000**4), ("GiB", 1024**3), ("GB", 1000**3), ("MiB", 1024**2),
                         ("MB", 1000**2)):
        if size >= factor and (size / factor * 10) == int(size / factor * 10):
            return f"{size / factor:g}{unit}"
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:.4g}{unit}"
    return f"{size:.0f}B"


@dataclass(frozen=True, slots=True)
class Threshold:
    """A size, or a share of the server's memory (`share`, 0 to 1): where a rule's host-pressure gate lies."""

    size: int | None = None
    share: float | None = None

    def bytes_of(self, total: int) -> float:
        """The threshold in bytes, for a server with `total` bytes of memory."""
        return float(self.size) if self.size is not None else (self.share or 0.0) * total

    def __str__(self) -> str:
        return f"{self.share * 100:g}%" if self.share is not None else format_size(self.size or 0)


def parse_threshold(value: object) -> Threshold:
    """A size (`4GiB`) or a share of the server's memory (`10%`, more than 0 and at most 100)."""
    if isinstance(value, Threshold):
        return value
    if isinstance(value, str) and value.strip().endswith("%"):
        text = value.strip()[:-1].strip()
        try:
            percent = float(text)
        except ValueError:
            raise ValueError(f"invalid share {value!r}: a percentage such as 10%") from None
        if not 0 < percent <= 100:
            raise ValueError(f"a share is more than 0% and at most 100%, got {value!r}")
        return Threshold(share=percent / 100)
    return Threshold(size=parse_size(value))


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_UNITS = ("y", "w", "d", "h", "m", "s", "ms")
"""Units in the only order Prometheus accepts them: largest first, each at most once."""
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}


def _parse_units(text: str) -> float | None:
    """Seconds from `1h30m`-style text, units in descending order each at most once; None if it is not that."""
    pos, seconds, last = 0, 0.0, -1
    for part in _DURATION_PART.finditer(text):
        rank = _UNITS.index(part.group(2))
        if part.start() != pos or rank <= last:
            return None
        seconds += float(part.group(1)) * _UNIT_SECONDS[part.group(2)]
        pos, last = part.end(), rank
    return seconds if text and pos == len(text) else None


def parse_duration(value: object) -> float:
    """Seconds from `500ms`, `30s`, `10m`, `1h30m`, `2d`, `1w`, or a plain non-negative number of seconds.

    As in Prometheus, units go largest first and each at most once: `30s10m` and `1s1s` are errors.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 10m or 1h30m, got a boolean")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError(
                f"duration must be a finite number of seconds >= 0, got a {len(str(value))}-digit number"
            ) from None
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            parsed = _parse_units(text)
            if parsed is None:
                raise ValueError(
                    f"invalid duration {value!r}: use a number of seconds or units ms, s, m, h, d, w, y, largest "
                    "first, each at most once (e.g. 500ms, 1h30m)"
                ) from None
            seconds = parsed
    else:
        raise ValueError(f"expected a duration such as 30s, 10m or 1h30m, got {type(value).__name__}")
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        raise ValueError(f"duration must be a finite number of seconds >= 0, got {value!r}")
    return seconds
