"""Long jobs are generators that yield progress and return their result (cancellable between
yields). :func:`drain` is the blocking form every CLI/test path uses."""

from __future__ import annotations

from typing import Generator, TypeVar

T = TypeVar("T")

__all__ = ["drain"]


def drain(gen: Generator[object, None, T]) -> T:
    """Run a job generator to completion, discarding progress; returns its return value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
