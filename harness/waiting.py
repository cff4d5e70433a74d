"""Waiting for something to happen: `eventually(fn)` polls until `fn` says it has, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(fn: Callable[[], T | None], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> T:
    """Call `fn` until it returns something truthy (and return that); fail with the last value after `timeout`.

    An AssertionError raised by `fn` counts as "not yet" and is reported if it is still the last word at the end, so
    `fn` may assert its way to the answer.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = fn()
        except AssertionError as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s{': ' + what if what else ''}; last value: {last!r}")
        time.sleep(interval)
