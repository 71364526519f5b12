"""The hash chain shared by every radreview audit log (review store and reading sessions).

Each audit row stores the SHA-256 of the canonical JSON ``[prev_hash, id, ts, actor, action,
payload]``; the first row links to :data:`GENESIS`. A separate one-row ``audit_head`` keeps the
last hash and the row count, so editing, deleting or inserting any row, the last one included,
is detected by :func:`verify_chain`. GUI-free, no database code: callers pass rows in.
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterable

__all__ = ["GENESIS", "row_hash", "verify_chain"]

GENESIS = "0" * 64


def row_hash(prev_hash: str, row_id: int, ts: str, actor: str, action: str, payload: str) -> str:
    """SHA-256 (hex) of the canonical JSON of one audit row and its predecessor's hash."""
    canon = json.dumps([prev_hash, row_id, ts, actor, action, payload], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def verify_chain(rows: Iterable[tuple], head: tuple | None) -> tuple[int, list[str]]:
    """Recompute the chain over ``rows`` (``(id, ts, actor, action, payload, prev_hash, hash)``
    ordered by id) against ``head`` (``(last_hash, count)`` or None).

    Returns ``(number_of_rows, problems)``; ``problems`` is empty when the chain is intact and
    otherwise names each edited, missing or inserted row.
    """
    problems: list[str] = []
    prev = GENESIS
    expected_id = 1
    n = 0
    for row_id, ts, actor, action, payload, prev_hash, h in rows:
        n += 1
        if row_id != expected_id:
            problems.append(f"audit row {expected_id} is missing (next row is {row_id})")
            expected_id = row_id
        if prev_hash != prev:
            problems.append(f"audit row {row_id}: previous-hash link broken (a row before it was changed or removed)")
        if row_hash(prev_hash, row_id, ts, actor, action, payload) != h:
            problems.append(f"audit row {row_id}: content does not match its hash (edited)")
        prev = h
        expected_id += 1
    if head is None or head[0] != prev or head[1] != n:
        problems.append(f"audit head says {head[1] if head else '?'} rows ending in {head[0][:12] if head else '?'}..., "
                        f"table has {n} ending in {prev[:12]}... (rows deleted or appended outside radreview)")
    return n, problems
