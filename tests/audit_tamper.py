"""A forger's tool for the review-store tests: recompute a review database's audit chain."""

from __future__ import annotations

from radreview.review.audit_chain import GENESIS, row_hash


def recompute_chain(con) -> tuple[int, str]:
    """Re-link and re-hash every audit row and the in-database head of an open sqlite3
    connection, as someone who edited rows (or a writer of radreview 0.1) would; the caller
    commits. Returns ``(rows, last hash)``."""
    prev = GENESIS
    rows = con.execute("SELECT id, ts, actor, action, payload FROM audit ORDER BY id").fetchall()
    for row_id, ts, actor, action, payload in rows:
        h = row_hash(prev, row_id, ts, actor, action, payload)
        con.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?", (prev, h, row_id))
        prev = h
    con.execute("UPDATE audit_head SET last_hash = ?, count = ?", (prev, len(rows)))
    return len(rows), prev
