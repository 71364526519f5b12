"""Agreement and paired-change statistics for reader studies, each with its reason when undefined.

GUI-free. Every function returns a JSON-ready dict; a value that is not defined for the data is
``None`` with a ``reason`` saying why, never a number that only looks like one (a kappa of two
raters who each gave one answer, a zero-width interval from a handful of cases).

- Cohen's kappa with the asymptotic standard error of Fleiss, Cohen & Everitt (1969), Psychol
  Bull 72:323-327 (``statsmodels.stats.inter_rater.cohens_kappa``).
- Fleiss' kappa for several raters (Fleiss 1971, Psychol Bull 76:378-382;
  ``statsmodels.stats.inter_rater.fleiss_kappa``) with a percentile bootstrap CI over cases.
- McNemar's exact test of the discordant pairs (McNemar 1947, Psychometrika 12:153-157;
  ``statsmodels.stats.contingency_tables.mcnemar(exact=True)``).
- Paired reading times: medians, interquartile ranges and the Wilcoxon signed-rank test
  (Wilcoxon 1945; ``scipy.stats.wilcoxon``).
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

__all__ = ["cohen_kappa", "fleiss_kappa", "mcnemar_switches", "paired_times", "MIN_CASES_FOR_CI"]

#: fewer cases than this: a kappa is given without an interval (asymptotic and bootstrap intervals
#: of a handful of cases are too narrow or degenerate to mean anything)
MIN_CASES_FOR_CI = 10
N_BOOT = 2000


def _r(v: float | None, nd: int = 4) -> float | None:
    if v is None or not np.isfinite(v):
        return None
    return round(float(v), nd)


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """Cohen's kappa between two binary raters over the same cases, with its 95 % CI.

    Returns
    -------
    ``{"kappa", "ci95", "n", "agreement", "reason"}``: ``kappa`` None (with ``reason``) when
    chance agreement is 1 (both raters gave one and the same answer throughout) or there are no
    cases; ``ci95`` None (with ``reason``) below :data:`MIN_CASES_FOR_CI` cases or when the
    standard error is 0 (perfect agreement).
    """
    from statsmodels.stats.inter_rater import cohens_kappa, to_table

    x = np.asarray(a, int)
    y = np.asarray(b, int)
    n = int(x.size)
    out: dict[str, Any] = {"kappa": None, "ci95": None, "n": n, "agreement": None, "reason": None}
    if n == 0:
        out["reason"] = "no cases read by both"
        return out
    out["agreement"] = _r(float((x == y).mean()))
    pe = x.mean() * y.mean() + (1 - x.mean()) * (1 - y.mean())
    if pe >= 1.0:
        out["reason"] = (f"both gave the same single answer on all {n} case(s): chance agreement is 1, so kappa "
                         "is undefined")
        return out
    table = to_table(np.c_[x, y], bins=[0, 1, 2])[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cohens_kappa(table)
    out["kappa"] = _r(res.kappa)
    if n < MIN_CASES_FOR_CI:
        out["reason"] = f"{n} case(s): no interval below {MIN_CASES_FOR_CI} cases"
    elif not res.std_kappa > 0:
        out["reason"] = f"perfect agreement on {n} cases: the asymptotic interval is degenerate"
    else:
        out["ci95"] = [_r(max(res.kappa_low, -1.0)), _r(min(res.kappa_upp, 1.0))]
    return out


def fleiss_kappa(decisions: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Fleiss' kappa of ``decisions`` (``(cases, raters)`` of 0/1; every rater rated every case).

    The CI is the 95 % percentile bootstrap over cases (``N_BOOT`` resamples, seeded).

    Returns
    -------
    ``{"kappa", "ci95", "n", "raters", "reason"}`` (``kappa`` None with ``reason`` when every
    decision is the same, or fewer than 2 raters or cases).
    """
    from statsmodels.stats.inter_rater import fleiss_kappa as _fk

    d = np.asarray(decisions, int)
    n, k = d.shape if d.ndim == 2 else (0, 0)
    out: dict[str, Any] = {"kappa": None, "ci95": None, "n": int(n), "raters": int(k), "reason": None}
    if k < 2 or n < 2:
        out["reason"] = f"{k} rater(s) on {n} case(s): Fleiss' kappa needs at least 2 of each"
        return out
    counts = np.c_[k - d.sum(axis=1), d.sum(axis=1)]
    if counts[:, 0].sum() == 0 or counts[:, 1].sum() == 0:
        out["reason"] = "every decision is the same: chance agreement is 1, so kappa is undefined"
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["kappa"] = _r(_fk(counts))
        if n < MIN_CASES_FOR_CI:
            out["reason"] = f"{n} cases: no interval below {MIN_CASES_FOR_CI} cases"
            return out
        rng = np.random.default_rng(seed)
        boots = []
        for _ in range(N_BOOT):
            c = counts[rng.integers(0, n, n)]
            if c[:, 0].sum() and c[:, 1].sum():
                boots.append(_fk(c))
    if len(boots) < 0.9 * N_BOOT:
        out["reason"] = "too many resamples with a single answer: no bootstrap interval"
    else:
        lo, hi = np.percentile(boots, [2.5, 97.5])
        out["ci95"] = [_r(lo), _r(hi)]
    return out


def mcnemar_switches(to_correct: int, to_incorrect: int) -> dict[str, Any]:
    """McNemar's exact test on the decisions that switched between the unaided and the aided read.

    ``to_correct`` = wrong unaided, right aided; ``to_incorrect`` = right unaided, wrong aided.
    H0: a switch is as likely to either side.

    Returns
    -------
    ``{"to_correct", "to_incorrect", "p", "reason"}``; ``p`` None with ``reason`` when nothing
    switched.
    """
    from statsmodels.stats.contingency_tables import mcnemar

    out: dict[str, Any] = {"to_correct": int(to_correct), "to_incorrect": int(to_incorrect), "p": None, "reason": None}
    if to_correct + to_incorrect == 0:
        out["reason"] = "no decision switched: nothing to test"
        return out
    res = mcnemar(np.array([[0, to_incorrect], [to_correct, 0]]), exact=True)
    out["p"] = _r(res.pvalue)
    return out


def paired_times(first: Sequence[float], second: Sequence[float]) -> dict[str, Any]:
    """Paired reading times (s): median and IQR of each, the median difference and the Wilcoxon
    signed-rank test (two-sided) of ``second - first``.

    Returns
    -------
    ``{"pairs", "first": {"median", "iqr"}, "second": {...}, "median_difference", "wilcoxon_p",
    "reason"}``; ``wilcoxon_p`` None with ``reason`` below 5 non-zero differences (where no
    two-sided exact p-value can fall below 0.05).
    """
    from scipy.stats import wilcoxon

    a = np.asarray(first, float)
    b = np.asarray(second, float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]

    def desc(v: np.ndarray) -> dict[str, Any]:
        if v.size == 0:
            return {"median": None, "iqr": None}
        q1, q3 = np.percentile(v, [25, 75])
        return {"median": _r(np.median(v), 3), "iqr": [_r(q1, 3), _r(q3, 3)]}

    out: dict[str, Any] = {"pairs": int(a.size), "first": desc(a), "second": desc(b),
                           "median_difference": _r(np.median(b - a), 3) if a.size else None,
                           "wilcoxon_p": None, "reason": None}
    nz = int(np.count_nonzero(b - a))
    if nz < 5:
        out["reason"] = f"{nz} non-zero paired difference(s): the signed-rank test needs at least 5"
        return out
    out["wilcoxon_p"] = _r(wilcoxon(b, a).pvalue)
    return out
