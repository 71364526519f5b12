"""Measurements saved with a study in the review store (ruler, angle, ROI: see viewer.measure).

One row per study in its own table ``measurements`` holding the study's measurement list as a
JSON blob (each item a plain dict: ``id``, ``kind``, ``points_lps`` (LPS mm), ``plane``,
``label``, ``source``, ``finding_id`` and any computed values). Saving replaces the study's
list in one durable transaction together with an audit row (action ``measurements``, payload:
study key and the saved items), through the store's audit-append helper, so measurements are
hash-chained like every decision. GUI-free; no Qt, no VTK.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["SCHEMA", "save_measurements", "load_measurements"]

SCHEMA = """CREATE TABLE IF NOT EXISTS measurements (
    study_key TEXT PRIMARY KEY, data TEXT NOT NULL, ts TEXT NOT NULL)"""


def _ensure(store) -> None:
    if not getattr(store, "_measurements_ready", False):
        with store._lock:
            store.conn.execute(SCHEMA)
        store._measurements_ready = True


def save_measurements(store, study_key: str, items: list[dict[str, Any]], actor: str) -> str:
    """Replace ``study_key``'s measurements with ``items``; returns the timestamp once durable.

    Raises
    ------
    ValueError
        If ``actor`` is empty, an item is not a dict with ``kind`` and ``points_lps``, or an item
        is not JSON-serialisable.
    """
    if not str(actor).strip():
        raise ValueError("saving measurements needs a reviewer name (actor)")
    for i, it in enumerate(items):
        if not isinstance(it, dict) or "kind" not in it or "points_lps" not in it:
            raise ValueError(f"measurement {i} must be a dict with 'kind' and 'points_lps', got {it!r}")
    try:
        data = json.dumps(items, sort_keys=True)
    except TypeError as exc:
        raise ValueError(f"measurements are not JSON-serialisable: {exc}") from None
    _ensure(store)
    from .store import _now

    ts = _now()
    return store._write(actor, "measurements", {"study": study_key, "measurements": items},
                        "INSERT OR REPLACE INTO measurements (study_key, data, ts) VALUES (?, ?, ?)",
                        (study_key, data, ts), ts)


def load_measurements(store, study_key: str) -> list[dict[str, Any]]:
    """The study's saved measurements (``[]`` when none were saved)."""
    _ensure(store)
    row = store.conn.execute("SELECT data FROM measurements WHERE study_key = ?", (study_key,)).fetchone()
    return json.loads(row[0]) if row else []
