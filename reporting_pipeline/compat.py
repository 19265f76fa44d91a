"""Stand-ins for standard-library APIs newer than Python 3.11, the oldest Python the pipeline supports."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def batched(iterable: Iterable[T], n: int) -> Iterator[tuple[T, ...]]:
    """itertools.batched (3.12+): tuples of n items, the last one shorter."""
    if n < 1:
        raise ValueError("n must be at least one")
    it = iter(iterable)
    while batch := tuple(itertools.islice(it, n)):
        yield batch


if hasattr(itertools, "batched"):
    batched = itertools.batched  # noqa: F811  the C version where there is one


def process_cpu_count() -> int | None:
    """os.process_cpu_count (3.13+): CPUs this process may run on, i.e. its affinity where the OS has one."""
    count = getattr(os, "process_cpu_count", None)  # looked up per call: tests patch it
    if count is not None:
        return count()
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()  # macOS, Windows: no affinity API
