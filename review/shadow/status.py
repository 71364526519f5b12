"""What the workstation's read-only Shadow panel shows, computed without Qt.

:func:`summary` reads a ledger: job counts, throughput, failures by reason, each series' job
state (so the study browser can mark series with shadow results without revealing them: no
probability leaves this function per series) and the latest report's headline per model.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from .ledger import ShadowLedger

__all__ = ["summary", "STATE_ORDER", "MIN_RATE_RESULTS", "MIN_RATE_SPAN_S"]

#: a series with several jobs shows the least finished one
STATE_ORDER = ("running", "queued", "failed", "done")
#: fewer stored results, or a shorter span, give no throughput (two results seconds apart would
#: read as thousands of studies an hour)
MIN_RATE_RESULTS = 10
MIN_RATE_SPAN_S = 300.0


def _epoch(ts: str) -> float | None:
    try:
        return datetime.fromisoformat(ts).timestamp()
    except (TypeError, ValueError):
        return None


def summary(ledger: ShadowLedger, now: float | None = None) -> dict[str, Any]:
    """``{"ledger", "counts", "throughput_per_hour", "last_hour", "failures": [{"reason", "count"}],
    "series_state": {series_uid: state}, "models": {id: {"processed", "n", "auc", "auc_ci95",
    "sensitivity", "specificity", "failed"}}}``.

    ``throughput_per_hour``: results stored per hour between the first and the last stored
    result (None below :data:`MIN_RATE_RESULTS` results or :data:`MIN_RATE_SPAN_S` seconds);
    ``last_hour``: results stored in the hour before ``now``.
    """
    from .report import build_report

    now = time.time() if now is None else now
    jobs = ledger.jobs()
    stored = sorted(e for e in (_epoch(j["updated"]) for j in jobs if j["state"] == "done") if e is not None)
    rate = None
    if len(stored) >= MIN_RATE_RESULTS and stored[-1] - stored[0] >= MIN_RATE_SPAN_S:
        rate = round((len(stored) - 1) / ((stored[-1] - stored[0]) / 3600.0), 1)
    fails: dict[str, int] = {}
    states: dict[str, str] = {}
    for j in jobs:
        if j["state"] == "failed":
            fails[j["reason"]] = fails.get(j["reason"], 0) + 1
        uid = j["series_uid"].split("#")[0]
        cur = states.get(uid)
        if cur is None or STATE_ORDER.index(j["state"]) < STATE_ORDER.index(cur):
            states[uid] = j["state"]
    rep = build_report(ledger)
    keys = ("processed", "n", "auc", "auc_ci95", "sensitivity", "specificity", "failed")
    return {"ledger": ledger.name, "counts": ledger.counts(), "throughput_per_hour": rate,
            "last_hour": sum(1 for e in stored if now - e <= 3600),
            "failures": [{"reason": r, "count": n} for r, n in sorted(fails.items(), key=lambda kv: -kv[1])],
            "series_state": states, "models": {m: {k: b.get(k) for k in keys} for m, b in rep["models"].items()}}
