"""Multi-reader multi-case (MRMC) ROC analysis: Obuchowski-Rockette with Hillis's degrees of freedom.

GUI-free and typed. The design is *factorial* (every reader rates every case in every modality);
a split-plot or otherwise incomplete design is refused with :class:`MRMCInputError`.

Notation (as in the papers and OR-DBM MRMC): ``t`` modalities (treatments), ``r`` readers,
``c`` cases of which ``c1`` are diseased (truth 1) and ``c0`` are not. The figure of merit is the
empirical (trapezoidal, Wilcoxon-Mann-Whitney) AUC ``theta[i, j]`` of modality ``i`` and reader
``j``, ties counted one half. The OR model is

    theta_ij = mu + tau_i + R_j + (tau R)_ij + eps_ij,

with random readers ``R_j ~ (0, var_r)``, interaction ``(tau R)_ij ~ (0, var_tr)`` and an error
whose covariance over cases is summarised by ``var_error`` (same modality and reader), ``cov1``
(different modality, same reader), ``cov2`` (same modality, different reader) and ``cov3``
(different modality and reader).

Methods and sources:

- AUC covariance by the case jackknife (the default; Dorfman, Berbaum & Metz 1992, as in OR-DBM
  MRMC and RJafroc: ``(c - 1) / c * sum_k (theta_(k) - mean)(...)^T``), by DeLong's structural
  components (DeLong, DeLong & Clarke-Pearson 1988, Biometrics 44:837-845), or by the stratified
  case bootstrap (cases resampled within each truth class).
- OR variance components, F test, pairwise differences and single-modality intervals: Obuchowski
  & Rockette (1995), Commun Stat Simul Comput 24:285-308; Hillis, Obuchowski, Schartz & Berbaum
  (2005), Stat Med 24:1579-1607; the denominator degrees of freedom ``ddf_H`` of Hillis (2007),
  Stat Med 26:596-619; the three analyses (random readers and cases, fixed readers, fixed cases)
  as in Hillis, Berbaum & Metz (2008), Acad Radiol 15:647-661, and OR-DBM MRMC 2.5.
- DBM variance components from jackknife pseudovalues: Dorfman, Berbaum & Metz (1992), Invest
  Radiol 27:723-731; their equality with the OR components is Hillis et al. (2005).
- Power for a planned study from pilot components: Hillis, Obuchowski & Berbaum (2011), Acad
  Radiol 18:129-142 (negative ``var_tr`` and ``cov2 - cov3`` taken as 0).

Validated against OR-DBM MRMC 2.51's output on the FedRoc study (4 readers, 5 modalities, 200
cases; ``tests/unit/test_mrmc.py``).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Iterable, Mapping

import numpy as np

from radreview.studies.errors import RadreviewError

__all__ = ["MRMCInputError", "RatingsTable", "read_ratings_csv", "ratings_from_rows", "empirical_auc",
           "auc_covariance", "or_variance_components", "dbm_variance_components", "analyse", "power",
           "power_table", "COVARIANCE_METHODS", "write_ratings_csv", "REFERENCES"]

COVARIANCE_METHODS = ("jackknife", "delong", "bootstrap")
#: bootstrap resamples used when ``covariance="bootstrap"`` and none are given
N_BOOTSTRAP = 2000
#: below this many cases of either truth class the result carries a warning (the OR variance
#: estimates of a handful of cases are unstable; a convention of this module, not a published cut-off)
MIN_CASES_PER_CLASS = 10
#: below this many readers the result carries a warning (random-reader df = readers - 1)
MIN_READERS = 3
ONE_MODALITY = "one modality: nothing to compare (single-modality intervals only)"
REFERENCES = [
    "Obuchowski NA, Rockette HE (1995). Hypothesis testing of diagnostic accuracy for multiple readers and "
    "multiple tests: an ANOVA approach with dependent observations. Commun Stat Simul Comput 24:285-308.",
    "Hillis SL, Obuchowski NA, Schartz KM, Berbaum KS (2005). A comparison of the Dorfman-Berbaum-Metz and "
    "Obuchowski-Rockette methods for receiver operating characteristic (ROC) data. Stat Med 24:1579-1607.",
    "Hillis SL (2007). A comparison of denominator degrees of freedom methods for multiple observer ROC "
    "analysis. Stat Med 26:596-619.",
    "Hillis SL, Berbaum KS, Metz CE (2008). Recent developments in the Dorfman-Berbaum-Metz procedure for "
    "multireader ROC study analysis. Acad Radiol 15:647-661.",
    "Hillis SL, Obuchowski NA, Berbaum KS (2011). Power estimation for multireader ROC methods: an updated "
    "and unified approach. Acad Radiol 18:129-142.",
    "DeLong ER, DeLong DM, Clarke-Pearson DL (1988). Comparing the areas under two or more correlated ROC "
    "curves: a nonparametric approach. Biometrics 44:837-845.",
]
_COLUMNS = ("reader", "modality", "case", "truth", "rating")


class MRMCInputError(ValueError, RadreviewError):
    """Ratings that do not make a factorial MRMC design (the message names the row or the gap)."""


def _natural(labels: Iterable[str]) -> list[str]:
    """Labels sorted numerically when every label is a number, else as strings."""
    labels = list(labels)
    try:
        return sorted(labels, key=lambda s: (float(s), s))
    except ValueError:
        return sorted(labels)


@dataclass(frozen=True)
class RatingsTable:
    """A complete factorial MRMC data set.

    Attributes
    ----------
    modalities, readers, cases:
        Labels (strings); modalities and readers in sorted order (numeric when all labels are
        numbers), cases in order of first appearance.
    truth:
        ``(c,)`` int array, 1 = diseased, 0 = not.
    ratings:
        ``(t, r, c)`` float array: modality x reader x case; higher = more suspicious.
    """

    modalities: tuple[str, ...]
    readers: tuple[str, ...]
    cases: tuple[str, ...]
    truth: np.ndarray
    ratings: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(t, r, c)``."""
        t, r, c = self.ratings.shape
        return t, r, c

    def rows(self) -> list[dict[str, Any]]:
        """One dict per rating (``reader, modality, case, truth, rating``), the CSV's rows."""
        out = []
        for i, m in enumerate(self.modalities):
            for j, rd in enumerate(self.readers):
                for k, cs in enumerate(self.cases):
                    out.append({"reader": rd, "modality": m, "case": cs, "truth": int(self.truth[k]),
                                "rating": float(self.ratings[i, j, k])})
        return out


def ratings_from_rows(rows: Iterable[Mapping[str, Any]], source: str = "ratings") -> RatingsTable:
    """Build a :class:`RatingsTable` from rating rows, checking the design.

    Parameters
    ----------
    rows:
        Mappings with keys ``reader, modality, case, truth, rating``; ``truth`` 0 or 1,
        ``rating`` a finite number. Row numbers in messages count the CSV header as row 1, so
        the first rating is row 2.
    source:
        Name used in error messages (the file path).

    Raises
    ------
    MRMCInputError
        A missing column, a non-numeric or non-finite rating, a truth other than 0/1, a case with
        two truth values, two ratings for one reader, modality and case, a reader without a rating
        for some case and modality, fewer than 2 readers, fewer than 1 case of either truth class.
    """
    truth: dict[str, int] = {}
    truth_row: dict[str, int] = {}
    cells: dict[tuple[str, str, str], float] = {}
    case_order: list[str] = []
    n = 0
    for n, row in enumerate(rows, start=2):
        missing = [k for k in _COLUMNS if row.get(k) in (None, "")]
        if missing:
            raise MRMCInputError(f"{source}: row {n}: missing {', '.join(missing)} (columns: {','.join(_COLUMNS)})")
        reader, modality, case = (str(row[k]).strip() for k in ("reader", "modality", "case"))
        try:
            rating = float(row["rating"])
        except (TypeError, ValueError):
            raise MRMCInputError(f"{source}: row {n}: rating {row['rating']!r} is not a number") from None
        if not math.isfinite(rating):
            raise MRMCInputError(f"{source}: row {n}: rating {row['rating']!r} is not finite")
        try:
            tv = float(row["truth"])
        except (TypeError, ValueError):
            tv = -1.0
        if tv not in (0.0, 1.0):
            raise MRMCInputError(f"{source}: row {n}: truth {row['truth']!r} is not 0 or 1")
        if case in truth and truth[case] != int(tv):
            raise MRMCInputError(f"{source}: row {n}: case {case!r} has truth {int(tv)} here but {truth[case]} "
                                 f"in row {truth_row[case]}")
        if case not in truth:
            truth[case], truth_row[case] = int(tv), n
            case_order.append(case)
        key = (modality, reader, case)
        if key in cells:
            raise MRMCInputError(f"{source}: row {n}: a second rating by reader {reader!r} of case {case!r} in "
                                 f"modality {modality!r}")
        cells[key] = rating
    if not cells:
        raise MRMCInputError(f"{source}: no ratings")
    modalities = _natural({k[0] for k in cells})
    readers = _natural({k[1] for k in cells})
    if len(readers) < 2:
        raise MRMCInputError(f"{source}: {len(readers)} reader(s): an MRMC analysis needs at least 2")
    y = np.array([truth[c] for c in case_order], int)
    if y.sum() == 0 or y.sum() == len(y):
        only = "diseased (truth 1)" if y.sum() else "non-diseased (truth 0)"
        raise MRMCInputError(f"{source}: every case is {only}: the AUC needs cases of both truth classes")
    ratings = np.full((len(modalities), len(readers), len(case_order)), np.nan)
    mi = {m: i for i, m in enumerate(modalities)}
    ri = {r: j for j, r in enumerate(readers)}
    ci = {c: k for k, c in enumerate(case_order)}
    for (m, r, c), v in cells.items():
        ratings[mi[m], ri[r], ci[c]] = v
    gaps = np.argwhere(np.isnan(ratings))
    if gaps.size:
        i, j, k = gaps[0]
        raise MRMCInputError(f"{source}: reader {readers[j]!r} has no rating for case {case_order[k]!r} in modality "
                             f"{modalities[i]!r} ({len(gaps)} gap(s); the design must be factorial: every reader rates "
                             "every case in every modality)")
    return RatingsTable(tuple(modalities), tuple(readers), tuple(case_order), y, ratings)


def read_ratings_csv(path: str | os.PathLike) -> RatingsTable:
    """Read ``reader,modality,case,truth,rating`` rows (one per rating, header required).

    Raises
    ------
    MRMCInputError
        The file cannot be read, lacks a column, or fails a check of :func:`ratings_from_rows`.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            lacking = [c for c in _COLUMNS if c not in header]
            if lacking:
                raise MRMCInputError(f"{path}: row 1: header lacks {', '.join(lacking)} (expected "
                                     f"{','.join(_COLUMNS)})")
            reader.fieldnames = header
            return ratings_from_rows(list(reader), source=str(path))
    except OSError as exc:
        raise MRMCInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise MRMCInputError(f"{path}: not a readable CSV file: {exc}") from None


def write_ratings_csv(table: RatingsTable, path: str | os.PathLike) -> None:
    """Write ``table`` as ``reader,modality,case,truth,rating`` rows (the input of MRMCaov, RJafroc)."""
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(_COLUMNS))
        w.writeheader()
        for row in table.rows():
            w.writerow({**row, "rating": f"{row['rating']:.10g}"})


# --------------------------------------------------------------------------------------- AUC

def _placements(ratings: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components of ``ratings`` (``(..., c)``).

    Returns ``v10`` (``(..., c1)``: for each diseased case, the fraction of non-diseased cases
    rated lower, ties one half) and ``v01`` (``(..., c0)``: for each non-diseased case, the
    fraction of diseased cases rated higher). ``mean(v10) == mean(v01) == AUC``.
    """
    pos = ratings[..., truth == 1]
    neg = ratings[..., truth == 0]
    lead = ratings.shape[:-1]
    flat_p = pos.reshape(-1, pos.shape[-1])
    flat_n = neg.reshape(-1, neg.shape[-1])
    v10 = np.empty_like(flat_p)
    v01 = np.empty_like(flat_n)
    for q in range(flat_p.shape[0]):
        ns, ps = np.sort(flat_n[q]), np.sort(flat_p[q])
        lo, hi = np.searchsorted(ns, flat_p[q], "left"), np.searchsorted(ns, flat_p[q], "right")
        v10[q] = (lo + 0.5 * (hi - lo)) / ns.size
        lo, hi = np.searchsorted(ps, flat_n[q], "left"), np.searchsorted(ps, flat_n[q], "right")
        v01[q] = (ps.size - hi + 0.5 * (hi - lo)) / ps.size
    return v10.reshape(*lead, -1), v01.reshape(*lead, -1)


def empirical_auc(ratings: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Empirical (trapezoidal, Wilcoxon-Mann-Whitney) AUC along the last axis.

    Parameters
    ----------
    ratings:
        ``(..., c)`` ratings, higher = more suspicious.
    truth:
        ``(c,)`` 0/1.

    Returns
    -------
    ``ratings.shape[:-1]`` float array: P(diseased rated higher) + 0.5 P(tie).
    """
    v10, _ = _placements(np.asarray(ratings, float), np.asarray(truth))
    return v10.mean(axis=-1)


def _auc_ranks(ratings: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The same AUC from mid-ranks (vectorised over leading axes; used by the bootstrap)."""
    from scipy.stats import rankdata

    ranks = rankdata(ratings, axis=-1)
    n1 = int(truth.sum())
    n0 = truth.size - n1
    return (ranks[..., truth == 1].sum(axis=-1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def _jackknife(theta: np.ndarray, v10: np.ndarray, v01: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Leave-one-case-out AUCs ``(t, r, c)`` from the structural components: deleting diseased
    case k gives ``(c1 theta - v10_k) / (c1 - 1)``, deleting non-diseased case l
    ``(c0 theta - v01_l) / (c0 - 1)``."""
    c1, c0 = v10.shape[-1], v01.shape[-1]
    jk = np.empty((*theta.shape, truth.size))
    jk[..., truth == 1] = (c1 * theta[..., None] - v10) / (c1 - 1)
    jk[..., truth == 0] = (c0 * theta[..., None] - v01) / (c0 - 1)
    return jk


def auc_covariance(table: RatingsTable, method: str = "jackknife", n_bootstrap: int = N_BOOTSTRAP,
                   seed: int = 0) -> np.ndarray:
    """Covariance of the reader x modality AUC estimates over the case population.

    Parameters
    ----------
    method:
        ``"jackknife"`` (delete one case at a time, diseased or not: ``(c-1)/c * sum_k
        (theta_(k) - theta_(.))^2``), ``"delong"`` (``S10 / c1 + S01 / c0`` from the structural
        components) or ``"bootstrap"`` (``n_bootstrap`` resamples of the cases within each truth
        class, seeded by ``seed``; sample covariance of the resampled AUCs).

    Returns
    -------
    ``(t, r, t, r)`` float array: ``cov[i, j, i2, j2]`` between ``theta[i, j]`` and
    ``theta[i2, j2]``.

    Raises
    ------
    ValueError
        Unknown ``method``, or a truth class with fewer than 2 cases (no covariance defined).
    """
    t, r, c = table.shape
    y = table.truth
    c1, c0 = int(y.sum()), int(c - y.sum())
    if min(c1, c0) < 2:
        raise MRMCInputError(f"{c1} diseased and {c0} non-diseased case(s): the AUC covariance needs at least 2 of each")
    if method not in COVARIANCE_METHODS:
        raise ValueError(f"covariance must be one of {', '.join(COVARIANCE_METHODS)}, not {method!r}")
    v10, v01 = _placements(table.ratings, y)
    theta = v10.mean(axis=-1)
    if method == "delong":
        a = v10.reshape(t * r, c1)
        b = v01.reshape(t * r, c0)
        cov = np.cov(a, ddof=1) / c1 + np.cov(b, ddof=1) / c0
    elif method == "jackknife":
        jk = _jackknife(theta, v10, v01, y)
        d = (jk - jk.mean(axis=-1, keepdims=True)).reshape(t * r, c)
        cov = (c - 1) / c * (d @ d.T)
    else:
        rng = np.random.default_rng(seed)
        pi, ni = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
        yb = np.r_[np.ones(c1, int), np.zeros(c0, int)]
        thetas = []
        for start in range(0, n_bootstrap, 200):
            m = min(200, n_bootstrap - start)
            idx = np.concatenate([pi[rng.integers(0, c1, (m, c1))], ni[rng.integers(0, c0, (m, c0))]], axis=1)
            sample = np.moveaxis(table.ratings[:, :, idx], 2, 0)  # (m, t, r, c)
            thetas.append(_auc_ranks(sample, yb).reshape(m, t * r))
        cov = np.cov(np.concatenate(thetas).T, ddof=1)
    return np.asarray(cov, float).reshape(t, r, t, r)


# ------------------------------------------------------------------------- variance components

def _mean_offdiag(block: np.ndarray) -> float:
    """Mean of the off-diagonal entries of a square matrix (nan when it is 1 x 1)."""
    n = block.shape[0]
    if n < 2:
        return float("nan")
    return float((block.sum() - np.trace(block)) / (n * (n - 1)))


def _cov_parts(cov: np.ndarray) -> dict[str, Any]:
    """``var_error, cov1, cov2, cov3`` (averages of the AUC covariance) and their per-modality
    (``var_error``, ``cov2``) and per-reader (``var_error``, ``cov1``) versions."""
    t, r = cov.shape[:2]
    diag = np.array([[cov[i, j, i, j] for j in range(r)] for i in range(t)])
    cov2_i = np.array([_mean_offdiag(cov[i, :, i, :]) for i in range(t)])
    cov1_j = np.array([_mean_offdiag(cov[:, j, :, j]) for j in range(r)])
    if t > 1:
        total3 = sum(cov[i, j, i2, j2] for i in range(t) for i2 in range(t) if i != i2
                     for j in range(r) for j2 in range(r) if j != j2)
        cov3 = float(total3 / (t * (t - 1) * r * (r - 1)))
    else:
        cov3 = float("nan")
    return {"var_error": float(diag.mean()), "cov1": float(np.mean(cov1_j)) if t > 1 else float("nan"),
            "cov2": float(np.mean(cov2_i)), "cov3": cov3, "var_error_i": diag.mean(axis=1), "cov2_i": cov2_i,
            "var_error_j": diag.mean(axis=0), "cov1_j": cov1_j}


def _anova(theta: np.ndarray) -> dict[str, Any]:
    """Modality x reader ANOVA of the AUCs (``theta``: ``(t, r)``): sums of squares, degrees of
    freedom and mean squares of T, R and T*R, and the reader mean square within each modality."""
    t, r = theta.shape
    g = theta.mean()
    mt, mr = theta.mean(axis=1), theta.mean(axis=0)
    ss_t = r * float(((mt - g) ** 2).sum())
    ss_r = t * float(((mr - g) ** 2).sum())
    ss_tr = float(((theta - mt[:, None] - mr[None, :] + g) ** 2).sum())
    df_t, df_r, df_tr = t - 1, r - 1, (t - 1) * (r - 1)
    ms_r_i = ((theta - mt[:, None]) ** 2).sum(axis=1) / (r - 1)
    return {"ss": {"t": ss_t, "r": ss_r, "tr": ss_tr}, "df": {"t": df_t, "r": df_r, "tr": df_tr},
            "ms": {"t": ss_t / df_t if df_t else float("nan"), "r": ss_r / df_r,
                   "tr": ss_tr / df_tr if df_tr else float("nan")},
            "ms_r_i": ms_r_i}


def or_variance_components(theta: np.ndarray, cov: np.ndarray) -> dict[str, float]:
    """Obuchowski-Rockette variance components (ANOVA estimates: they can be negative).

    ``var_r = (MS(R) - var_tr - var_error - (t-1) cov1 + cov2 + (t-1) cov3) / t`` and
    ``var_tr = MS(T*R) - var_error + cov1 + cov2 - cov3`` (method-of-moments from the OR model's
    expected mean squares; Hillis et al. 2005, Table I). With one modality ``var_tr`` and the
    ``cov1`` / ``cov3`` terms are not estimable and ``var_r`` absorbs the interaction.

    Parameters
    ----------
    theta:
        ``(t, r)`` AUCs.
    cov:
        ``(t, r, t, r)`` AUC covariance (:func:`auc_covariance`).

    Returns
    -------
    ``{"var_r", "var_tr", "cov1", "cov2", "cov3", "var_error"}`` (AUC units squared; NaN where
    not estimable).
    """
    t, _ = theta.shape
    p = _cov_parts(cov)
    ms = _anova(theta)["ms"]
    if t > 1:
        var_tr = ms["tr"] - p["var_error"] + p["cov1"] + p["cov2"] - p["cov3"]
        var_r = (ms["r"] - var_tr - p["var_error"] - (t - 1) * p["cov1"] + p["cov2"] + (t - 1) * p["cov3"]) / t
    else:
        var_tr = float("nan")
        var_r = ms["r"] - p["var_error"] + p["cov2"]
    return {"var_r": float(var_r), "var_tr": float(var_tr), "cov1": p["cov1"], "cov2": p["cov2"], "cov3": p["cov3"],
            "var_error": p["var_error"]}


def dbm_variance_components(table: RatingsTable) -> dict[str, float]:
    """Dorfman-Berbaum-Metz variance components from the case-jackknife pseudovalues.

    Pseudovalues ``Y[i, j, k] = c theta[i, j] - (c - 1) theta_(k)[i, j]`` enter a modality x
    reader x case ANOVA; the components are the usual random-effects solutions (Dorfman,
    Berbaum & Metz 1992): ``var_r = (MS(R) - MS(TR) - MS(RC) + MS(TRC)) / (t c)``,
    ``var_c = (MS(C) - MS(TC) - MS(RC) + MS(TRC)) / (t r)``, ``var_tr = (MS(TR) - MS(TRC)) / c``,
    ``var_tc = (MS(TC) - MS(TRC)) / r``, ``var_rc = (MS(RC) - MS(TRC)) / t``,
    ``var_trc_error = MS(TRC)``. Needs at least 2 modalities.

    Returns
    -------
    ``{"var_r", "var_c", "var_tr", "var_tc", "var_rc", "var_trc_error"}`` (pseudovalue units
    squared).
    """
    t, r, c = table.shape
    if t < 2:
        raise MRMCInputError("the DBM components need at least 2 modalities")
    v10, v01 = _placements(table.ratings, table.truth)
    theta = v10.mean(axis=-1)
    Y = c * theta[..., None] - (c - 1) * _jackknife(theta, v10, v01, table.truth)
    g = Y.mean()
    mi, mj, mk = Y.mean(axis=(1, 2)), Y.mean(axis=(0, 2)), Y.mean(axis=(0, 1))
    mij, mik, mjk = Y.mean(axis=2), Y.mean(axis=1), Y.mean(axis=0)
    ms_c = t * r * ((mk - g) ** 2).sum() / (c - 1)
    ms_tr = c * ((mij - mi[:, None] - mj[None, :] + g) ** 2).sum() / ((t - 1) * (r - 1))
    ms_tc = r * ((mik - mi[:, None] - mk[None, :] + g) ** 2).sum() / ((t - 1) * (c - 1))
    ms_rc = t * ((mjk - mj[:, None] - mk[None, :] + g) ** 2).sum() / ((r - 1) * (c - 1))
    ms_r = t * c * ((mj - g) ** 2).sum() / (r - 1)
    resid = Y - mij[:, :, None] - mik[:, None, :] - mjk[None, :, :] + mi[:, None, None] + mj[None, :, None] \
        + mk[None, None, :] - g
    ms_trc = (resid ** 2).sum() / ((t - 1) * (r - 1) * (c - 1))
    return {"var_r": float((ms_r - ms_tr - ms_rc + ms_trc) / (t * c)),
            "var_c": float((ms_c - ms_tc - ms_rc + ms_trc) / (t * r)),
            "var_tr": float((ms_tr - ms_trc) / c), "var_tc": float((ms_tc - ms_trc) / r),
            "var_rc": float((ms_rc - ms_trc) / t), "var_trc_error": float(ms_trc)}


# ---------------------------------------------------------------------------------- analyses

def _f(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _ci(est: float, half: float) -> list[float | None]:
    """``[est - half, est + half]``; ``[None, None]`` when the half-width is 0 or not finite (a
    zero-width interval says nothing about the population: it only shows that no variance was
    observed)."""
    if not (math.isfinite(half) and half > 0):
        return [None, None]
    return [_f(est - half), _f(est + half)]


NO_VARIANCE = "no variance observed (identical reader AUCs, no case variance): no interval"


def analyse(table: RatingsTable, covariance: str = "jackknife", alpha: float = 0.05,
            n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """The Obuchowski-Rockette MRMC analysis of the reader x modality AUCs.

    Three analyses, as OR-DBM MRMC prints them:

    ``rrrc`` (random readers, random cases; results apply to both populations)
        ``F = MS(T) / (MS(T*R) + r max(cov2 - cov3, 0))`` on ``t - 1`` and Hillis's
        ``ddf_H = (MS(T*R) + r max(cov2 - cov3, 0))^2 / (MS(T*R)^2 / ((t-1)(r-1)))``; pairwise
        differences with ``stderr = sqrt(2/r (MS(T*R) + r max(cov2 - cov3, 0)))`` and Student t
        on ``ddf_H``; single-modality intervals from that modality's reader mean square and
        ``cov2`` (``ddf_H_single``).
    ``frrc`` (fixed readers, random cases)
        ``chi2 = (t-1) MS(T) / (var_error - cov1 + (r-1) max(cov2 - cov3, 0))`` on ``t - 1``;
        pairwise differences with normal intervals; single-modality intervals; and the
        differences within each reader (``stderr = sqrt(2 (var_error_j - cov1_j))``).
    ``rrfc`` (random readers, fixed cases)
        the modality x reader ANOVA: ``F = MS(T) / MS(T*R)`` on ``t - 1, (t-1)(r-1)``.

    Parameters
    ----------
    table:
        A factorial ratings table (:func:`read_ratings_csv`).
    covariance:
        :data:`COVARIANCE_METHODS` (see :func:`auc_covariance`).
    alpha:
        Two-sided level of the intervals (0.05 gives 95 % intervals; the keys keep the name
        ``ci95``).

    Returns
    -------
    A JSON-ready dict: ``readers``, ``modalities`` (strings, sorted), ``cases``, ``positives``,
    ``negatives``, ``covariance``, ``auc`` (``{modality: {reader: auc}}``), ``auc_mean``,
    ``variance_components``, ``correlations``, ``anova``, ``by_modality``, ``by_reader``,
    ``dbm_variance_components`` (jackknife only), ``rrrc``, ``frrc``, ``rrfc`` (each with a
    ``reason`` when its test is undefined), ``warnings`` (too few cases or readers, intervals
    beyond [0, 1]), ``alpha``, ``references``. A comparison's ``difference`` is modality ``a`` minus modality ``b`` with
    ``a`` before ``b`` in sorted order. F tests and comparisons are null with one modality.

    Raises
    ------
    MRMCInputError
        A truth class with fewer than 2 cases.
    """
    from scipy import stats

    t, r, c = table.shape
    theta = empirical_auc(table.ratings, table.truth)
    cov = auc_covariance(table, covariance, n_bootstrap=n_bootstrap, seed=seed)
    parts = _cov_parts(cov)
    anova = _anova(theta)
    ms_t, ms_tr = anova["ms"]["t"], anova["ms"]["tr"]
    vc = or_variance_components(theta, cov)
    var_e, cov1, cov2, cov3 = vc["var_error"], vc["cov1"], vc["cov2"], vc["cov3"]
    mods, rds = list(table.modalities), list(table.readers)
    mean_t = theta.mean(axis=1)
    z = float(stats.norm.ppf(1 - alpha / 2))
    pairs = list(combinations(range(t), 2))

    # random readers, random cases
    rrrc: dict[str, Any] = {"f": None, "ndf": t - 1, "ddf": None, "p": None, "error_term": None,
                            "comparisons": [], "single": [], "reason": None if t > 1 else ONE_MODALITY}
    if t > 1:
        den = ms_tr + r * max(cov2 - cov3, 0.0)
        if not den > 0:
            rrrc["reason"] = ("the error term MS(T*R) + r max(cov2 - cov3, 0) is 0 (every reader's modality difference "
                              "is the same and the cases add no variance): F, p and the intervals are undefined")
        ddf = den ** 2 / (ms_tr ** 2 / ((t - 1) * (r - 1))) if ms_tr > 0 else float("inf")
        fval = ms_t / den if den > 0 else float("nan")
        rrrc.update(f=_f(fval), ddf=_f(ddf) if math.isfinite(ddf) else None, error_term=_f(den),
                    p=_f(stats.f.sf(fval, t - 1, ddf)) if math.isfinite(fval) else None)
        se = math.sqrt(2 / r * den) if den > 0 else float("nan")
        tq = float(stats.t.ppf(1 - alpha / 2, ddf))
        for a, b in pairs:
            d = float(mean_t[a] - mean_t[b])
            tv = d / se if se > 0 else float("nan")
            rrrc["comparisons"].append({"a": mods[a], "b": mods[b], "difference": d, "stderr": _f(se), "df": _f(ddf),
                                        "t": _f(tv), "p": _f(2 * stats.t.sf(abs(tv), ddf)),
                                        "ci95": _ci(d, tq * se)})
    for i in range(t):
        den_i = anova["ms_r_i"][i] + r * max(parts["cov2_i"][i], 0.0)
        se_i = math.sqrt(den_i / r)
        df_i = den_i ** 2 / (anova["ms_r_i"][i] ** 2 / (r - 1)) if anova["ms_r_i"][i] > 0 else float("inf")
        tq = float(stats.t.ppf(1 - alpha / 2, df_i)) if math.isfinite(df_i) else z
        rrrc["single"].append({"modality": mods[i], "auc": float(mean_t[i]), "stderr": _f(se_i),
                               "df": _f(df_i), "ci95": _ci(float(mean_t[i]), tq * se_i),
                               "cov2": _f(parts["cov2_i"][i]), "ms_r": _f(anova["ms_r_i"][i]),
                               "reason": None if se_i > 0 else NO_VARIANCE})

    # fixed readers, random cases
    frrc: dict[str, Any] = {"chi2": None, "df": t - 1, "p": None, "comparisons": [], "single": [], "by_reader": [],
                            "reason": None if t > 1 else ONE_MODALITY}
    if t > 1:
        den = var_e - cov1 + (r - 1) * max(cov2 - cov3, 0.0)
        if not den > 0:
            frrc["reason"] = ("var_error - cov1 + (r - 1) max(cov2 - cov3, 0) is not positive: the cases give no "
                              "variance of the modality difference; chi-square, p and the intervals are undefined")
        chi2 = (t - 1) * ms_t / den if den > 0 else float("nan")
        frrc.update(chi2=_f(chi2), p=_f(stats.chi2.sf(chi2, t - 1)) if math.isfinite(chi2) else None)
        se = math.sqrt(2 / r * den) if den > 0 else float("nan")
        for a, b in pairs:
            d = float(mean_t[a] - mean_t[b])
            zv = d / se if se > 0 else float("nan")
            frrc["comparisons"].append({"a": mods[a], "b": mods[b], "difference": d, "stderr": _f(se), "z": _f(zv),
                                        "p": _f(2 * stats.norm.sf(abs(zv))), "ci95": _ci(d, z * se)})
        for j in range(r):
            se_j = math.sqrt(max(2 * (parts["var_error_j"][j] - parts["cov1_j"][j]), 0.0))
            for a, b in pairs:
                d = float(theta[a, j] - theta[b, j])
                zv = d / se_j if se_j > 0 else float("nan")
                frrc["by_reader"].append({"reader": rds[j], "a": mods[a], "b": mods[b], "difference": d,
                                          "stderr": _f(se_j), "z": _f(zv),
                                          "p": _f(2 * stats.norm.sf(abs(zv))) if math.isfinite(zv) else None,
                                          "ci95": _ci(d, z * se_j)})
    for i in range(t):
        se_i = math.sqrt((parts["var_error_i"][i] + (r - 1) * max(parts["cov2_i"][i], 0.0)) / r)
        frrc["single"].append({"modality": mods[i], "auc": float(mean_t[i]), "stderr": _f(se_i),
                               "ci95": _ci(float(mean_t[i]), z * se_i), "var_error": _f(parts["var_error_i"][i]),
                               "cov2": _f(parts["cov2_i"][i]), "reason": None if se_i > 0 else NO_VARIANCE})

    # random readers, fixed cases
    rrfc: dict[str, Any] = {"f": None, "ndf": t - 1, "ddf": (t - 1) * (r - 1), "p": None, "comparisons": [],
                            "single": [], "reason": None if t > 1 else ONE_MODALITY}
    if t > 1:
        df_tr = (t - 1) * (r - 1)
        if not ms_tr > 0:
            rrfc["reason"] = "MS(T*R) is 0 (every reader's modality difference is the same): F and p are undefined"
        fval = ms_t / ms_tr if ms_tr > 0 else float("nan")
        rrfc.update(f=_f(fval), p=_f(stats.f.sf(fval, t - 1, df_tr)) if math.isfinite(fval) else None)
        se = math.sqrt(2 / r * ms_tr)
        tq = float(stats.t.ppf(1 - alpha / 2, df_tr))
        for a, b in pairs:
            d = float(mean_t[a] - mean_t[b])
            tv = d / se if se > 0 else float("nan")
            rrfc["comparisons"].append({"a": mods[a], "b": mods[b], "difference": d, "stderr": _f(se), "df": df_tr,
                                        "t": _f(tv), "p": _f(2 * stats.t.sf(abs(tv), df_tr)) if se > 0 else None,
                                        "ci95": _ci(d, tq * se)})
    tq = float(stats.t.ppf(1 - alpha / 2, r - 1))
    for i in range(t):
        se_i = math.sqrt(anova["ms_r_i"][i] / r)
        rrfc["single"].append({"modality": mods[i], "auc": float(mean_t[i]), "ms_r": _f(anova["ms_r_i"][i]),
                               "stderr": _f(se_i), "df": r - 1, "ci95": _ci(float(mean_t[i]), tq * se_i),
                               "reason": None if se_i > 0 else NO_VARIANCE})

    corr = {k: _f(vc[k] / var_e) if var_e > 0 else None for k in ("cov1", "cov2", "cov3")}
    warn = []
    c1 = int(table.truth.sum())
    if min(c1, c - c1) < MIN_CASES_PER_CLASS:
        warn.append(f"{c1} positive and {c - c1} negative cases: with fewer than {MIN_CASES_PER_CLASS} of either class "
                    "the variance estimates are unstable and the intervals unreliable")
    if r < MIN_READERS:
        warn.append(f"{r} readers: the random-reader analyses rest on {r - 1} reader degree(s) of freedom")
    lows = [s["ci95"][0] for a in (rrrc, frrc, rrfc) for s in a["single"] if s["ci95"][0] is not None]
    highs = [s["ci95"][1] for a in (rrrc, frrc, rrfc) for s in a["single"] if s["ci95"][1] is not None]
    if (lows and min(lows) < 0) or (highs and max(highs) > 1):
        warn.append("an AUC interval extends beyond [0, 1]: the study is too small for these intervals to be "
                    "informative (they are printed unclipped, as OR-DBM MRMC prints them)")
    out: dict[str, Any] = {
        "readers": rds, "modalities": mods, "cases": c, "positives": int(table.truth.sum()),
        "negatives": int(c - table.truth.sum()), "covariance": covariance, "alpha": alpha,
        "auc": {m: {rd: float(theta[i, j]) for j, rd in enumerate(rds)} for i, m in enumerate(mods)},
        "auc_mean": {m: float(mean_t[i]) for i, m in enumerate(mods)},
        "variance_components": {k: _f(v) for k, v in vc.items()},
        "correlations": corr,
        "anova": {"ss": {k: _f(v) for k, v in anova["ss"].items()}, "df": anova["df"],
                  "ms": {k: _f(v) for k, v in anova["ms"].items()}},
        "by_modality": {m: {"var_error": _f(parts["var_error_i"][i]), "cov2": _f(parts["cov2_i"][i]),
                            "ms_r": _f(anova["ms_r_i"][i])} for i, m in enumerate(mods)},
        "by_reader": {rd: {"var_error": _f(parts["var_error_j"][j]), "cov1": _f(parts["cov1_j"][j])}
                      for j, rd in enumerate(rds)},
        "dbm_variance_components": dbm_variance_components(table) if covariance == "jackknife" and t > 1 else None,
        "rrrc": rrrc, "frrc": frrc, "rrfc": rrfc, "warnings": warn, "references": REFERENCES,
    }
    if covariance == "bootstrap":
        out["bootstrap"] = {"resamples": n_bootstrap, "seed": seed, "stratified": True}
    return out


# ------------------------------------------------------------------------------------- power

def power(components: Mapping[str, float], effect: float, readers: int, cases: int, pilot_cases: int,
          alpha: float = 0.05, analysis: str = "rrrc") -> dict[str, Any]:
    """Power of a planned two-modality study from pilot OR variance components.

    Hillis, Obuchowski & Berbaum (2011): the pilot's error covariances scale with
    ``pilot_cases / cases``; with ``s = pilot_cases / cases``, ``vtr = max(var_tr, 0)`` and
    ``d23 = max(cov2 - cov3, 0)``:

    - ``rrrc``: ``den = vtr + s (var_error - cov1 + (readers-1) d23)``,
      ``ddf = den^2 / ((vtr + s (var_error - cov1 - d23))^2 / (readers-1))``;
    - ``frrc``: ``den = s (var_error - cov1 + (readers-1) d23)``, ``ddf = cases - 1``;
    - ``rrfc``: ``den = vtr + s (var_error - cov1 - d23)``, ``ddf = readers - 1``;

    noncentrality ``lambda = readers effect^2 / (2 den)`` and power
    ``P(F(1, ddf, lambda) > F_(1-alpha)(1, ddf))`` (scipy's noncentral F).

    Parameters
    ----------
    components:
        ``var_tr, cov1, cov2, cov3, var_error`` of the pilot (:func:`or_variance_components`).
    effect:
        The AUC difference to detect (its sign does not matter).
    readers, cases:
        The planned study's size.
    pilot_cases:
        Cases in the pilot the components came from.

    Returns
    -------
    ``{"readers", "cases", "power", "ncp", "ddf", "f_critical", "reason"}``: ``power`` None with
    ``reason`` when the components give no positive error variance (a degenerate pilot);
    ``ddf`` None (infinite: the chi-square limit is used) when the expected ``MS(T*R)`` is 0.

    Raises
    ------
    ValueError
        Unknown ``analysis``; fewer than 2 readers or cases; non-finite components.
    """
    from scipy import stats

    if analysis not in ("rrrc", "frrc", "rrfc"):
        raise ValueError(f"analysis must be rrrc, frrc or rrfc, not {analysis!r}")
    if readers < 2 or cases < 2:
        raise ValueError("power needs at least 2 readers and 2 cases")
    keys = ("var_tr", "cov1", "cov2", "cov3", "var_error")
    vals = [components.get(k) for k in keys]
    if any(v is None or not math.isfinite(v) for v in vals):
        raise ValueError("power needs finite var_tr, cov1, cov2, cov3 and var_error (two or more modalities)")
    var_tr, cov1, cov2, cov3, var_e = (float(v) for v in vals)  # type: ignore[arg-type]
    s = pilot_cases / cases
    vtr, d23 = max(var_tr, 0.0), max(cov2 - cov3, 0.0)
    if analysis == "rrrc":
        den = vtr + s * (var_e - cov1 + (readers - 1) * d23)
        ms_tr = vtr + s * (var_e - cov1 - d23)  # expected MS(T*R) of the planned study
        ddf = den ** 2 / (ms_tr ** 2 / (readers - 1)) if ms_tr > 0 else float("inf")
    elif analysis == "frrc":
        den = s * (var_e - cov1 + (readers - 1) * d23)
        ddf = float(cases - 1)
    else:
        den = vtr + s * (var_e - cov1 - d23)
        ddf = float(readers - 1)
    if not den > 0:
        return {"readers": readers, "cases": cases, "power": None, "ncp": None, "ddf": None, "f_critical": None,
                "reason": "the pilot's variance components give no positive error variance: power undefined"}
    ncp = readers * effect ** 2 / (2 * den)
    if math.isfinite(ddf):
        fcrit = float(stats.f.ppf(1 - alpha, 1, ddf))
        pw = float(stats.ncf.sf(fcrit, 1, ddf, ncp))
    else:  # F(1, inf) is chi-square(1)
        fcrit = float(stats.chi2.ppf(1 - alpha, 1))
        pw = float(stats.ncx2.sf(fcrit, 1, ncp))
    return {"readers": readers, "cases": cases, "power": pw, "ncp": float(ncp),
            "ddf": float(ddf) if math.isfinite(ddf) else None, "f_critical": fcrit, "reason": None}


def power_table(components: Mapping[str, float], effect: float, readers: Iterable[int], cases: Iterable[int],
                pilot_cases: int, alpha: float = 0.05, analysis: str = "rrrc") -> list[dict[str, Any]]:
    """:func:`power` for every readers x cases combination (rows ordered by readers, then cases)."""
    cs = list(cases)
    return [power(components, effect, rd, cc, pilot_cases, alpha, analysis) for rd in readers for cc in cs]
