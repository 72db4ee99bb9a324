"""Counts in sentences: ``plural(1, "event")`` is "1 event", ``plural(2, "event")`` "2 events"."""

from __future__ import annotations


def plural(count: int, noun: str) -> str:
    """``count`` and ``noun``, with an "s" unless the count is one (the nouns printed here are
    all regular: event, partition, broker, file)."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
