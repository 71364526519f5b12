"""The shadow-deployment report: the AI measured against the radiologists, per model.

Unit of analysis: the **study** (Study Instance UID). A study with several eligible series (two
reconstructions, say) gets the most suspicious of its series' probabilities for each model, so no
study is counted twice; the outcome is the study's (:mod:`radreview.review.shadow.outcomes`).
Models without a study probability (segmentation) are listed with their counts only.

Per model (``report.json`` ``models``):

- ``n`` (studies with a result and an outcome), ``positives``, ``processed`` (studies with a
  result), ``series``, ``alert_rate`` (fraction of processed studies the AI called positive);
- ``auc`` (empirical, = scikit-learn's ``roc_auc_score``) with ``auc_ci95`` from DeLong's
  variance (DeLong, DeLong & Clarke-Pearson 1988) on the logit scale, given only with at least
  :data:`MIN_PER_CLASS` studies of each class (else ``auc_ci95_reason``);
- ``sensitivity``, ``specificity``, ``ppv``, ``npv`` at the card's decision threshold, each with a
  Wilson score interval (Wilson 1927; ``statsmodels.stats.proportion.proportion_confint``);
- ``ece``: expected calibration error over 10 equal-width probability bins, and ``reliability``
  (each bin's count, mean probability and fraction positive);
- ``subgroups`` by manufacturer, scanner, kernel, slice thickness and site (or ``--by``): counts
  always, metrics only from :data:`MIN_SUBGROUP` studies with both classes present, else a
  ``reason``;
- ``drift`` per ISO week of the study date: inputs (HU histogram PSI against the first week,
  median slice spacing, kernel mix) and outputs (probability PSI and the two-sample
  Kolmogorov-Smirnov p against the first week; PSI as in Siddiqi 2006, 10 bins, counts floored
  at 0.5);
- ``failures``: failed jobs by reason.

Written as ``report.json``, ``report.html`` (ROC, reliability and drift plots) and
``results.csv`` (one row per study and model).
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from radreview.studies.errors import RadreviewError

from .ledger import ShadowLedger

__all__ = ["ReportError", "build_report", "write_report", "MIN_PER_CLASS", "MIN_SUBGROUP", "psi", "delong_auc_ci",
           "wilson"]

#: fewer studies of either class: no AUC interval (DeLong's variance of a handful is meaningless)
MIN_PER_CLASS = 5
#: fewer studies in a subgroup: counts only, no metric
MIN_SUBGROUP = 10
DEFAULT_BY = ["manufacturer", "scanner", "kernel", "slice_thickness_mm", "site"]


class ReportError(ValueError, RadreviewError):
    """The report cannot be made (bad dates, an unknown subgroup field, an unwritable folder)."""


def _r(v, nd: int = 4):
    if v is None:
        return None
    v = float(v)
    return round(v, nd) if math.isfinite(v) else None


def wilson(k: int, n: int) -> list[float | None] | None:
    """95 % Wilson score interval of ``k / n``; None when ``n == 0``."""
    if n == 0:
        return None
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    return [_r(lo), _r(hi)]


def delong_auc_ci(y: np.ndarray, p: np.ndarray) -> tuple[float, list[float | None] | None, str | None]:
    """``(auc, ci95, reason)``: the empirical AUC and a 95 % CI from DeLong's variance,
    computed on the logit of the AUC and transformed back (so it stays inside (0, 1)); no CI
    below :data:`MIN_PER_CLASS` per class or when the variance is 0 (perfect separation)."""
    from radreview.review.mrmc import RatingsTable, auc_covariance, empirical_auc

    y = np.asarray(y, int)
    p = np.asarray(p, float)
    auc = float(empirical_auc(p[None, :], y)[0])
    n1, n0 = int(y.sum()), int((1 - y).sum())
    if min(n1, n0) < MIN_PER_CLASS:
        return auc, None, f"{n1} positive and {n0} negative studies: no interval below {MIN_PER_CLASS} of each"
    t = RatingsTable(("ai",), ("ai",), tuple(str(i) for i in range(len(y))), y, p[None, None, :])
    var = float(auc_covariance(t, "delong")[0, 0, 0, 0])
    if not var > 0 or not 0 < auc < 1:
        return auc, None, "the AI separates the classes perfectly here: DeLong's variance is 0, no interval"
    logit = math.log(auc / (1 - auc))
    se = math.sqrt(var) / (auc * (1 - auc))
    return auc, [_r(1 / (1 + math.exp(-(logit - 1.96 * se)))), _r(1 / (1 + math.exp(-(logit + 1.96 * se))))], None


def psi(expected: np.ndarray, actual: np.ndarray) -> float | None:
    """Population stability index of two histograms (counts) over the same bins."""
    e = np.maximum(np.asarray(expected, float), 0.5)
    a = np.maximum(np.asarray(actual, float), 0.5)
    if e.sum() <= 0 or a.sum() <= 0:
        return None
    e, a = e / e.sum(), a / a.sum()
    return _r(float(((a - e) * np.log(a / e)).sum()))


def _week(study_date: str) -> str:
    try:
        d = date(int(study_date[:4]), int(study_date[4:6]), int(study_date[6:8]))
    except (ValueError, TypeError):
        return "unknown"
    y, w, _ = d.isocalendar()
    return f"{y}-W{w:02d}"


def _metrics(y: np.ndarray, p: np.ndarray, pos: np.ndarray) -> dict[str, Any]:
    tp = int((pos & (y == 1)).sum())
    fn = int((~pos & (y == 1)).sum())
    tn = int((~pos & (y == 0)).sum())
    fp = int((pos & (y == 0)).sum())
    out: dict[str, Any] = {"n": int(len(y)), "positives": int(y.sum())}
    if y.min(initial=1) == y.max(initial=0):
        out.update(auc=None, auc_ci95=None, auc_ci95_reason="one outcome class only: no AUC")
    else:
        auc, ci, why = delong_auc_ci(y, p)
        out.update(auc=_r(auc), auc_ci95=ci, auc_ci95_reason=why)
    for name, k, n in (("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp), ("ppv", tp, tp + fp),
                       ("npv", tn, tn + fn)):
        out[name] = _r(k / n) if n else None
        out[f"{name}_ci95"] = wilson(k, n)
    out["confusion"] = {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    return out


def _reliability(y: np.ndarray, p: np.ndarray) -> tuple[float | None, list[dict]]:
    bins = np.clip((p * 10).astype(int), 0, 9)
    rows, ece = [], 0.0
    for b in range(10):
        m = bins == b
        if not m.any():
            continue
        mp, fp = float(p[m].mean()), float(y[m].mean())
        ece += m.sum() / len(p) * abs(mp - fp)
        rows.append({"bin": [b / 10, (b + 1) / 10], "n": int(m.sum()), "mean_probability": _r(mp),
                     "fraction_positive": _r(fp)})
    return (_r(ece) if len(p) else None), rows


def _in_range(study_date: str, since: str | None, until: str | None) -> bool:
    if not since and not until:
        return True
    if not study_date:
        return False
    return (not since or study_date >= since) and (not until or study_date <= until)


def _date(text: str | None, what: str) -> str | None:
    if not text:
        return None
    s = text.replace("-", "")
    if len(s) != 8 or not s.isdigit():
        raise ReportError(f"--{what} {text!r}: expected YYYY-MM-DD")
    return s


def build_report(ledger: ShadowLedger, since: str | None = None, until: str | None = None,
                 by: list[str] | None = None) -> dict[str, Any]:
    """The report as a dict (see the module docstring), plus ``rows`` (``results.csv``)."""
    since, until = _date(since, "since"), _date(until, "until")
    by = by or DEFAULT_BY
    series = ledger.all_series()
    known = set().union(*(s["attrs"].keys() for s in series.values())) if series else set(DEFAULT_BY)
    unknown = [b for b in by if b not in known and b not in DEFAULT_BY]
    if unknown:
        raise ReportError(f"--by: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    jobs = ledger.jobs()
    results = ledger.results()
    outcomes = ledger.outcomes()
    rows: list[dict[str, Any]] = []
    models: dict[str, Any] = {}
    failures: dict[tuple[str, str], int] = {}
    per_model: dict[str, dict[str, dict]] = {}
    for j in jobs:
        s = series.get(j["series_uid"], {"attrs": {}})
        if not _in_range(str(s["attrs"].get("study_date") or ""), since, until):
            continue
        if j["state"] == "failed":
            failures[(j["model_id"], j["reason"])] = failures.get((j["model_id"], j["reason"]), 0) + 1
        r = results.get(j["key"])
        if r is None:
            continue
        st = per_model.setdefault(j["model_id"], {}).setdefault(j["study_uid"], {"series": [], "attrs": s["attrs"]})
        st["series"].append((j["series_uid"], r))
    for mid, studies in per_model.items():
        recs = []
        for study_uid, st in studies.items():
            probs = [(r.get("probability"), sid, r) for sid, r in st["series"] if r.get("probability") is not None]
            out = outcomes.get(study_uid)
            if probs:
                p, sid, r = max(probs, key=lambda t: t[0])
                recs.append({"study_uid": study_uid, "series_uid": sid, "probability": float(p),
                             "threshold": float(r["threshold"]), "ai_positive": bool(r["positive"]),
                             "outcome": None if out is None else int(out["positive"]), "attrs": st["attrs"],
                             "input": r.get("input", {}), "series_count": len(st["series"])})
        rows += [{"model": mid, **{k: v for k, v in rec.items() if k not in ("attrs", "input")}} for rec in recs]
        block: dict[str, Any] = {"processed": len(studies), "series": sum(len(s["series"]) for s in studies.values()),
                                 "threshold": recs[0]["threshold"] if recs else None,
                                 "alert_rate": _r(np.mean([r["ai_positive"] for r in recs])) if recs else None}
        lab = [r for r in recs if r["outcome"] is not None]
        y = np.array([r["outcome"] for r in lab], int)
        p = np.array([r["probability"] for r in lab], float)
        pos = np.array([r["ai_positive"] for r in lab], bool)
        if lab:
            block.update(_metrics(y, p, pos))
            block["ece"], block["reliability"] = _reliability(y, p)
        else:
            block.update(n=0, positives=0, auc=None, auc_ci95=None, auc_ci95_reason="no outcomes imported",
                         sensitivity=None, specificity=None, ppv=None, npv=None, ece=None, reliability=[])
        subgroups = []
        for field_name in by:
            groups: dict[str, list[dict]] = {}
            for r in lab:
                v = r["attrs"].get(field_name)
                groups.setdefault("unknown" if v in (None, "") else str(v), []).append(r)
            for value, g in sorted(groups.items()):
                gy = np.array([r["outcome"] for r in g], int)
                entry: dict[str, Any] = {"field": field_name, "value": value, "n": len(g), "positives": int(gy.sum())}
                if len(g) < MIN_SUBGROUP:
                    entry["reason"] = f"{len(g)} studies: too few for a number (at least {MIN_SUBGROUP})"
                elif gy.min() == gy.max():
                    entry["reason"] = "one outcome class only: no AUC, sensitivity or specificity pair"
                else:
                    m = _metrics(gy, np.array([r["probability"] for r in g]), np.array([r["ai_positive"] for r in g]))
                    entry.update({k: m[k] for k in ("auc", "auc_ci95", "sensitivity", "specificity", "ppv", "npv")})
                subgroups.append(entry)
        block["subgroups"] = subgroups
        block["drift"] = _drift(recs)
        models[mid] = block
    fail_list = [{"model": m, "reason": why, "count": n} for (m, why), n in sorted(failures.items(), key=lambda kv: -kv[1])]
    for fm in {fm for fm, _ in failures}:
        models.setdefault(fm, {"processed": 0, "n": 0, "auc": None, "auc_ci95": None})
    for fm, b in models.items():
        b["failed"] = sum(n for (mm, _), n in failures.items() if mm == fm)
    return {"models": models, "failures": fail_list, "skipped": len(ledger.skipped()),
            "period": {"since": since, "until": until}, "unit": "study (most suspicious series per study)",
            "definitions": {"min_per_class_for_auc_ci": MIN_PER_CLASS, "min_subgroup": MIN_SUBGROUP,
                            "auc_ci": "DeLong variance, logit scale", "proportion_ci": "Wilson score"},
            "rows": rows}


def _drift(recs: list[dict]) -> list[dict]:
    from scipy.stats import ks_2samp

    weeks: dict[str, list[dict]] = {}
    for r in recs:
        weeks.setdefault(_week(str(r["attrs"].get("study_date") or "")), []).append(r)
    order = sorted(weeks)
    if not order:
        return []
    first = weeks[order[0]]
    p0 = np.array([r["probability"] for r in first])
    h0 = np.sum([r["input"].get("hu_hist", []) for r in first if r["input"].get("hu_hist")], axis=0) \
        if any(r["input"].get("hu_hist") for r in first) else None
    out = []
    for w in order:
        g = weeks[w]
        p = np.array([r["probability"] for r in g])
        hist = [r["input"].get("hu_hist") for r in g if r["input"].get("hu_hist")]
        kernels: dict[str, int] = {}
        for r in g:
            k = str(r["attrs"].get("kernel") or "unknown")
            kernels[k] = kernels.get(k, 0) + 1
        dz = [r["input"]["spacing_mm"][2] for r in g if r["input"].get("spacing_mm")]
        entry = {"week": w, "n": len(g), "probability_median": _r(np.median(p)),
                 "probability_psi": psi(np.histogram(p0, bins=10, range=(0, 1))[0], np.histogram(p, bins=10, range=(0, 1))[0]),
                 "probability_ks_p": _r(ks_2samp(p0, p).pvalue) if w != order[0] else None,
                 "hu_psi": psi(h0, np.sum(hist, axis=0)) if (h0 is not None and hist) else None,
                 "slice_spacing_mm_median": _r(np.median(dz), 3) if dz else None, "kernels": kernels}
        out.append(entry)
    return out


def _plots(rep: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    files = []
    by_model: dict[str, list[dict]] = {}
    for r in rep["rows"]:
        by_model.setdefault(r["model"], []).append(r)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), dpi=90)
    ax_roc, ax_rel, ax_drift = axes
    for mid, rs in by_model.items():
        lab = [r for r in rs if r["outcome"] is not None]
        ys = [r["outcome"] for r in lab]
        if len(set(ys)) == 2:
            fpr, tpr, _ = roc_curve(ys, [r["probability"] for r in lab])
            ax_roc.plot(fpr, tpr, label=f"{mid} (AUC {rep['models'][mid]['auc']:.2f})")
        rel = rep["models"][mid].get("reliability") or []
        if rel:
            ax_rel.plot([b["mean_probability"] for b in rel], [b["fraction_positive"] for b in rel], "o-", label=mid)
        drift = rep["models"][mid].get("drift") or []
        if drift:
            ax_drift.plot([d["week"] for d in drift], [d["probability_median"] for d in drift], "o-", label=mid)
    ax_roc.plot([0, 1], [0, 1], color="0.7", lw=0.8)
    ax_roc.set(title="ROC (studies with an outcome)", xlabel="1 - specificity", ylabel="sensitivity")
    ax_rel.plot([0, 1], [0, 1], color="0.7", lw=0.8)
    ax_rel.set(title="Reliability (10 bins)", xlabel="mean probability", ylabel="fraction positive", xlim=(0, 1),
               ylim=(0, 1))
    ax_drift.set(title="Median probability per week", xlabel="ISO week of the study date", ylabel="probability",
                 ylim=(0, 1))
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "shadow.png")
    plt.close(fig)
    files.append("shadow.png")
    return files


def write_report(ledger: ShadowLedger, out: str | os.PathLike, since: str | None = None, until: str | None = None,
                 by: list[str] | None = None) -> dict[str, Any]:
    """Write ``report.json``, ``report.html``, ``results.csv`` and ``shadow.png`` into ``out``."""
    rep = build_report(ledger, since, until, by)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"{out}: cannot create the folder ({exc.strerror or exc})") from None
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["model", "study_uid", "series_uid", "series_count", "probability", "threshold",
                                           "ai_positive", "outcome"])
        w.writeheader()
        for r in rep["rows"]:
            w.writerow({k: r.get(k) for k in w.fieldnames})
    files = ["report.json", "report.html", "results.csv"] + _plots(rep, out)
    rep["files"] = files
    body = {k: v for k, v in rep.items() if k != "rows"}
    (out / "report.json").write_text(json.dumps(body, indent=1))
    (out / "report.html").write_text(_html(body))
    return rep


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))


def _html(rep: dict) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>radreview shadow deployment report</title>"
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px;margin:.5em 0}"
             "td,th{border:1px solid #bbb;padding:3px 6px}</style></head><body><h1>Shadow deployment report</h1>",
             f"<p>Unit: {html.escape(rep['unit'])}. Period: {_fmt(rep['period']['since'])} to "
             f"{_fmt(rep['period']['until'])}. {rep['skipped']} series or files skipped as not eligible.</p>"]
    for mid, m in rep["models"].items():
        parts.append(f"<h2>{html.escape(mid)}</h2><table><tr><th>processed</th><th>with outcome</th><th>positives</th>"
                     "<th>alert rate</th><th>AUC (95% CI)</th><th>sensitivity</th><th>specificity</th><th>PPV</th>"
                     "<th>NPV</th><th>ECE</th><th>failed</th></tr>")
        ci = _fmt(m.get("auc_ci95")) if m.get("auc_ci95") else f"no CI: {html.escape(m.get('auc_ci95_reason') or '')}"
        cells = [m.get("processed"), m.get("n"), m.get("positives"), m.get("alert_rate"), f"{_fmt(m.get('auc'))} {ci}"]
        for k in ("sensitivity", "specificity", "ppv", "npv"):
            cells.append(f"{_fmt(m.get(k))} {_fmt(m.get(k + '_ci95'))}")
        cells += [m.get("ece"), m.get("failed")]
        parts.append("<tr>" + "".join(f"<td>{c if isinstance(c, str) else _fmt(c)}</td>" for c in cells) + "</tr></table>")
        if m.get("subgroups"):
            parts.append("<h3>Subgroups</h3><table><tr><th>field</th><th>value</th><th>n</th><th>positives</th>"
                         "<th>AUC</th><th>sensitivity</th><th>specificity</th><th>note</th></tr>")
            for g in m["subgroups"]:
                parts.append(f"<tr><td>{html.escape(g['field'])}</td><td>{html.escape(g['value'])}</td><td>{g['n']}</td>"
                             f"<td>{g['positives']}</td><td>{_fmt(g.get('auc'))}</td><td>{_fmt(g.get('sensitivity'))}</td>"
                             f"<td>{_fmt(g.get('specificity'))}</td><td>{html.escape(g.get('reason', ''))}</td></tr>")
            parts.append("</table>")
        if m.get("drift"):
            parts.append("<h3>Weekly drift (against the first week)</h3><table><tr><th>week</th><th>n</th>"
                         "<th>median p</th><th>p PSI</th><th>p KS p-value</th><th>HU PSI</th><th>slice spacing</th>"
                         "<th>kernels</th></tr>")
            for d in m["drift"]:
                parts.append(f"<tr><td>{d['week']}</td><td>{d['n']}</td><td>{_fmt(d['probability_median'])}</td>"
                             f"<td>{_fmt(d['probability_psi'])}</td><td>{_fmt(d['probability_ks_p'])}</td>"
                             f"<td>{_fmt(d['hu_psi'])}</td><td>{_fmt(d['slice_spacing_mm_median'])}</td>"
                             f"<td>{html.escape(', '.join(f'{k} {v}' for k, v in d['kernels'].items()))}</td></tr>")
            parts.append("</table>")
    if rep["failures"]:
        parts.append("<h2>Failures</h2><table><tr><th>model</th><th>reason</th><th>jobs</th></tr>" + "".join(
            f"<tr><td>{html.escape(f['model'])}</td><td>{html.escape(f['reason'])}</td><td>{f['count']}</td></tr>"
            for f in rep["failures"]) + "</table>")
    parts.append('<img src="shadow.png" alt="ROC, reliability and drift"></body></html>')
    return "".join(parts)
