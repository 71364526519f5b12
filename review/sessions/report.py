"""Session report: accuracy of the AI and of each reader unaided and aided, switches (automation
bias), agreement with the AI, reading times; ``report.json``, ``reads.csv``, ``report.html``.

Definitions (all decisions binary): a reader is positive at suspicion score >= 50
(:data:`~radreview.review.sessions.core.POSITIVE_SCORE`), the AI at its card's decision
threshold. AUC is scikit-learn's ``roc_auc_score`` on the scores (reader score / 100, AI
probability); sensitivity and specificity are at those thresholds; a *switch* is a case whose
binary decision differs between the locked unaided read and the final read, *toward_ai* when
the final decision equals the AI's; kappa is scikit-learn's Cohen's kappa between the reader's
and the AI's decisions. 95 % CIs: percentile bootstrap over cases (``scipy.stats.bootstrap``,
2000 resamples, stratified by truth, seeded from the session seed). *pooled* pools every
reader's reads (AUC over all reader-case pairs; the bootstrap resamples cases with all their
reads). Metrics needing truth are null where truth is missing, never imputed. Only closed reads
(locked / final) count.

MRMC: the reads become ratings ``reader, modality (unaided / aided), case, truth, score`` over the
cases with truth that every reader closed in every phase the mode has (the others are counted
and named as excluded), written to ``ratings.csv`` in the format of ``radreview mrmc`` (and
MRMCaov / RJafroc), and analysed by :func:`radreview.review.mrmc.analyse` (Obuchowski-Rockette
with Hillis's ddf, jackknife covariance) with a power table for a follow-up study
(:func:`radreview.review.mrmc.power_table`, AUC difference :data:`POWER_EFFECT`). With one
phase (shadow, concurrent) only the single-modality intervals exist. Agreement and change
(:mod:`radreview.review.agreement`): Cohen's kappa of each reader with the AI and Fleiss' kappa
among readers, per phase, with CIs or the reason there is none; McNemar's exact test of the
switches to correct vs to incorrect; paired reading times (unaided vs revision) with the
Wilcoxon signed-rank test.
"""

from __future__ import annotations

import csv
import html
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .core import POSITIVE_SCORE, ReadingSession
from radreview.review import mrmc
from radreview.review.agreement import cohen_kappa, fleiss_kappa, mcnemar_switches, paired_times
from radreview.review.mrmc_report import html_section, plot_reader_aucs

__all__ = ["build_report", "write_report", "mrmc_ratings", "POWER_EFFECT"]

N_BOOT = 2000
#: AUC difference (aided - unaided) the follow-up power table is computed for
POWER_EFFECT = 0.05
PHASE_LABELS = {"unaided": "unaided", "aided": "AI-aided"}


def _num(v):
    if v is None:
        return None
    v = float(v)
    return None if not np.isfinite(v) else round(v, 4)


def _auc(y: np.ndarray, s: np.ndarray):
    from sklearn.metrics import roc_auc_score

    if len(y) == 0 or len(set(y.tolist())) < 2:
        return None
    return _num(roc_auc_score(y, s))


def _sens_spec(y: np.ndarray, d: np.ndarray):
    pos, neg = y == 1, y == 0
    sens = _num(d[pos].mean()) if pos.any() else None
    spec = _num(1 - d[neg].mean()) if neg.any() else None
    return sens, spec


def _mw_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney form of the AUC (equal to roc_auc_score), used inside the bootstrap."""
    pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    if pos.size == 0 or neg.size == 0:
        return np.nan
    gt = (pos[:, None] > neg[None, :]).mean()
    eq = (pos[:, None] == neg[None, :]).mean()
    return float(gt + 0.5 * eq)


def _auc_ci(matrix: np.ndarray, truth: np.ndarray, seed: int):
    """95 % percentile bootstrap CI of the pooled AUC of ``matrix`` (readers x cases, NaN =
    no read), resampling positive and negative cases separately (scipy.stats.bootstrap)."""
    from scipy.stats import bootstrap

    pi = np.flatnonzero(truth == 1)
    ni = np.flatnonzero(truth == 0)
    pi = pi[np.isfinite(matrix[:, pi]).any(axis=0)]
    ni = ni[np.isfinite(matrix[:, ni]).any(axis=0)]
    if len(pi) < 2 or len(ni) < 2:
        return None

    def stat(p, n):
        return _mw_auc(matrix[:, p.astype(int)].ravel(), matrix[:, n.astype(int)].ravel())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap((pi, ni), stat, paired=False, vectorized=False, n_resamples=N_BOOT, method="percentile",
                        confidence_level=0.95, random_state=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return [_num(lo), _num(hi)] if np.isfinite(lo) and np.isfinite(hi) else None


def _phase_metrics(reads: list[dict], case_ids: list[str], readers: list[str], truth: dict[str, int], seed: int):
    """Metrics for one phase over ``reads`` (dicts with reader, case, score, seconds)."""
    if not reads:
        return None
    idx = {c: i for i, c in enumerate(case_ids)}
    ridx = {r: i for i, r in enumerate(readers)}
    known = [r for r in reads if r["case"] in truth]
    y = np.array([truth[r["case"]] for r in known], int)
    s = np.array([r["score"] / 100.0 for r in known], float)
    d = np.array([r["score"] >= POSITIVE_SCORE for r in known], float)
    sens, spec = _sens_spec(y, d) if len(known) else (None, None)
    mat = np.full((len(readers), len(case_ids)), np.nan)
    for r in reads:
        mat[ridx[r["reader"]], idx[r["case"]]] = r["score"] / 100.0
    tv = np.array([truth.get(c, -1) for c in case_ids])
    secs = [r["seconds"] for r in reads if r["seconds"] is not None]
    return {"n": len(reads), "auc": _auc(y, s), "auc_ci95": _auc_ci(mat, tv, seed) if len(known) else None,
            "sensitivity": sens, "specificity": spec, "median_seconds": _num(np.median(secs)) if secs else None}


def mrmc_ratings(rows: list[dict], readers: list[str], case_ids: list[str], truth: dict[str, int]):
    """The closed reads as a factorial MRMC ratings table (modality = phase, rating = score).

    Returns ``(table or None, {"cases_used", "excluded": {case: reason}, "reason"})``. A case is
    used when it has truth and every reader closed it in every phase the session's reads have.
    """
    phases = sorted({r["phase"] for r in rows})
    score = {(r["reader"], r["case"], r["phase"]): r["score"] for r in rows if r["score"] is not None}
    excluded: dict[str, str] = {}
    used = []
    for c in case_ids:
        if c not in truth:
            excluded[c] = "no truth"
            continue
        gaps = [f"{rd}/{ph}" for rd in readers for ph in phases if (rd, c, ph) not in score]
        if gaps:
            excluded[c] = "not closed by " + ", ".join(gaps)
            continue
        used.append(c)
    info: dict[str, Any] = {"cases_used": len(used), "excluded": excluded, "reason": None}
    if len(readers) < 2:
        info["reason"] = f"{len(readers)} reader: an MRMC analysis needs at least 2 readers"
        return None, info
    if not phases:
        info["reason"] = "no closed reads"
        return None, info
    n1 = sum(truth[c] for c in used)
    if min(n1, len(used) - n1) < 2:
        info["reason"] = (f"{n1} positive and {len(used) - n1} negative case(s) read by every reader in every phase: "
                          "the AUC covariance needs at least 2 of each")
        return None, info
    flat = [{"reader": rd, "modality": ph, "case": c, "truth": truth[c], "rating": score[(rd, c, ph)]}
            for ph in phases for rd in readers for c in used]
    return mrmc.ratings_from_rows(flat, source="session reads"), info


def _mrmc(session: ReadingSession, rows: list[dict], case_ids: list[str], truth: dict[str, int]):
    table, info = mrmc_ratings(rows, list(session.readers), case_ids, truth)
    if table is None:
        return None, {"computed": False, **info}
    res = mrmc.analyse(table, covariance="jackknife")
    block: dict[str, Any] = {"computed": True, **info, "labels": {m: PHASE_LABELS.get(m, m) for m in table.modalities},
                             **res}
    t, r, c = table.shape
    if t > 1:
        from radreview.review.mrmc_report import default_power_grid

        rd, cs = default_power_grid(r, c)
        block["power"] = {"analysis": "rrrc", "effect": POWER_EFFECT, "alpha": res["alpha"],
                          "table": mrmc.power_table(res["variance_components"], POWER_EFFECT, rd, cs, pilot_cases=c)}
    else:
        block["note"] = (f"one phase ({table.modalities[0]}) in {session.mode} mode: no comparison; the single-"
                         "modality AUC intervals are given")
    return table, block


def _fleiss(rows: list[dict], readers, phase: str, seed: int) -> dict:
    dec = {(r["reader"], r["case"]): bool(r["positive"]) for r in rows if r["phase"] == phase and r["score"] is not None}
    cases = sorted({c for _, c in dec})
    full = [c for c in cases if all((rd, c) in dec for rd in readers)]
    return fleiss_kappa(np.array([[dec[(rd, c)] for rd in readers] for c in full], int).reshape(len(full), len(readers)),
                        seed=seed)


def build_report(session: ReadingSession) -> dict:
    """The report as a dict (the ``report.json`` schema of the README), plus ``figures``: the
    exact data each figure plots, and ``rows``: one row per read and phase (``reads.csv``)."""
    from sklearn.metrics import roc_curve

    case_ids = [c["case_id"] for c in session.cases()]
    truth, lesions = session.truth()
    ai_all = session.ai_results()
    model = session.models[0] if session.models else None
    ai = {c: ai_all[c][model] for c in case_ids if model in ai_all.get(c, {})}
    thr = next((a["threshold"] for a in ai.values()), None)
    closed = [r for r in session.reads() if r.state != "open"]
    rows: list[dict[str, Any]] = [{"reader": r.reader, "case": r.case_id, "phase": r.phase, "state": r.state, "score": r.score,
             "positive": r.positive, "seconds": r.seconds, "findings": r.findings, "opened": r.opened_wall,
             "closed": r.closed_wall} for r in closed]
    seed = session.seed

    # AI
    ai_cases = [c for c in case_ids if c in ai and c in truth]
    ya = np.array([truth[c] for c in ai_cases], int)
    pa = np.array([ai[c]["probability"] for c in ai_cases], float)
    da = np.array([bool(ai[c]["positive"]) for c in ai_cases], float)
    sens, spec = _sens_spec(ya, da) if ai_cases else (None, None)
    ai_block = {"model": model, "threshold": thr, "cases_run": len(ai), "auc": _auc(ya, pa), "sensitivity": sens,
                "specificity": spec}

    figures: dict = {"roc": {}, "switches": {}, "times": {}}
    if ai_cases and _auc(ya, pa) is not None:
        fpr, tpr, _ = roc_curve(ya, pa)
        figures["roc"]["AI"] = {"fpr": [_num(v) for v in fpr], "tpr": [_num(v) for v in tpr], "auc": _auc(ya, pa)}

    def reader_block(names: list[str], label: str) -> dict:
        mine = [r for r in rows if r["reader"] in names]
        un = [r for r in mine if r["phase"] == "unaided"]
        ad = [r for r in mine if r["phase"] == "aided"]
        block = {"reader": label, "reads": len(mine),
                 "unaided": _phase_metrics(un, case_ids, names, truth, seed),
                 "aided": _phase_metrics(ad, case_ids, names, truth, seed)}
        for phase, group in (("unaided", un), ("aided", ad)):
            k = [r for r in group if r["case"] in truth]
            if k and block[phase] and block[phase]["auc"] is not None:
                fpr, tpr, _ = roc_curve([truth[r["case"]] for r in k], [r["score"] / 100 for r in k])
                figures["roc"][f"{label} {phase}"] = {"fpr": [_num(v) for v in fpr], "tpr": [_num(v) for v in tpr],
                                                      "auc": block[phase]["auc"]}
            secs = [r["seconds"] for r in group if r["seconds"] is not None]
            if secs:
                figures["times"][f"{label} {phase}"] = secs
        # switches: sequential reads with both phases closed
        pairs: list[tuple[dict, dict]] = []
        if session.mode == "sequential":
            u = {(r["reader"], r["case"]): r for r in un}
            pairs = [(u[(r["reader"], r["case"])], r) for r in ad if r["state"] == "final" and (r["reader"], r["case"]) in u]
            sw = [(a, b) for a, b in pairs if a["positive"] != b["positive"]]
            has_truth = all(b["case"] in truth for _, b in sw)
            has_ai = all(b["case"] in ai for _, b in sw)
            block["switches"] = {
                "pairs": len(pairs), "total": len(sw),
                "to_correct": sum(int(b["positive"]) == truth[b["case"]] for _, b in sw) if has_truth else None,
                "to_incorrect": sum(int(b["positive"]) != truth[b["case"]] for _, b in sw) if has_truth else None,
                "toward_ai": sum(b["positive"] == bool(ai[b["case"]]["positive"]) for _, b in sw) if has_ai else None,
                "away_from_ai": sum(b["positive"] != bool(ai[b["case"]]["positive"]) for _, b in sw) if has_ai else None}
            figures["switches"][label] = block["switches"]
        else:
            block["switches"] = None

        def kap(group):
            g = [r for r in group if r["case"] in ai]
            return cohen_kappa([r["positive"] for r in g], [bool(ai[r["case"]]["positive"]) for r in g])

        kappas = {"unaided": kap(un), "aided": kap(ad)}
        block["kappa_vs_ai"] = {ph: k["kappa"] for ph, k in kappas.items()}
        block["kappa_vs_ai_detail"] = kappas
        sw_block = block["switches"]
        block["mcnemar"] = (mcnemar_switches(sw_block["to_correct"], sw_block["to_incorrect"])
                            if sw_block and sw_block["to_correct"] is not None else None)
        if session.mode == "sequential":
            timed = [(a["seconds"], b["seconds"]) for a, b in pairs if a["seconds"] is not None and b["seconds"] is not None]
            block["reading_time"] = paired_times([a for a, _ in timed], [b for _, b in timed])
        else:
            block["reading_time"] = None
        return block

    readers = [reader_block([r], r) for r in session.readers]
    pooled = reader_block(list(session.readers), "pooled") if len(session.readers) > 1 else {**readers[0], "reader": "pooled"}
    table, mrmc_block = _mrmc(session, rows, case_ids, truth)
    agreement = {"fleiss_readers": {ph: _fleiss(rows, session.readers, ph, seed) for ph in ("unaided", "aided")}}
    return {"mode": session.mode, "question": session.question, "cases": len(case_ids),
            "cases_with_truth": sum(c in truth for c in case_ids), "lesions": sum(len(v) for v in lesions.values()),
            "seed": seed, "ai": ai_block, "readers": readers, "pooled": pooled, "mrmc": mrmc_block,
            "agreement": agreement, "ratings": table,
            "definitions": {"positive_score": POSITIVE_SCORE, "ci": f"percentile bootstrap over cases, {N_BOOT} resamples, "
                            "stratified by truth (scipy.stats.bootstrap)", "pooled": "all readers' reads together"},
            "figures": figures, "rows": rows}


def _plot(rep: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    files = []
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=100)
    for name, c in rep["figures"]["roc"].items():
        ax.plot(c["fpr"], c["tpr"], lw=2.2 if name == "AI" else 1.4,
                ls="--" if name.endswith("unaided") else "-", label=f"{name} (AUC {c['auc']:.2f})")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC: AI and readers (unaided / aided)", xlim=(0, 1), ylim=(0, 1.02))
    if rep["figures"]["roc"]:
        ax.legend(fontsize=7, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no truth with both classes: no ROC", ha="center")
    fig.tight_layout()
    fig.savefig(out / "roc.png")
    plt.close(fig)
    files.append("roc.png")

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    sw = rep["figures"]["switches"]
    if sw:
        names = list(sw)
        keys = ["toward_ai", "away_from_ai", "to_correct", "to_incorrect"]
        w = 0.8 / len(keys)
        for k, key in enumerate(keys):
            ax.bar(np.arange(len(names)) + k * w, [sw[n][key] or 0 for n in names], w, label=key.replace("_", " "))
        ax.set_xticks(np.arange(len(names)) + 0.4 - w / 2, names)
        ax.set(ylabel="cases", title="Switches of the binary decision, unaided -> final")
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, f"{rep['mode']} mode: no unaided -> aided switches", ha="center", va="center")
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out / "switches.png")
    plt.close(fig)
    files.append("switches.png")

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    times = rep["figures"]["times"]
    if times:
        ax.boxplot(list(times.values()), showmeans=False)
        ax.set_xticks(range(1, len(times) + 1), list(times), rotation=20, fontsize=7)
        ax.set(ylabel="seconds", title="Reading time (opened -> locked; revealed -> final)")
    else:
        ax.text(0.5, 0.5, "no closed reads", ha="center")
    fig.tight_layout()
    fig.savefig(out / "times.png")
    plt.close(fig)
    files.append("times.png")
    return files


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _mrmc_html(block: dict) -> str:
    if not block["computed"]:
        return f"<h2>MRMC analysis</h2><p>Not computed: {html.escape(block['reason'])}.</p>"
    pw = block.get("power") or {}
    excluded = block["excluded"]
    note = (f"<p>{block['cases_used']} case(s) used; {len(excluded)} excluded (" +
            html.escape("; ".join(f"{c}: {why}" for c, why in list(excluded.items())[:10])) +
            (" ..." if len(excluded) > 10 else "") + ").</p>") if excluded else ""
    extra = f"<p>{html.escape(block['note'])}</p>" if block.get("note") else ""
    return (html_section(block, pw.get("table"), pw.get("effect"), block["labels"], figure="mrmc_readers.png",
                         order=["unaided", "aided"])
            + note + extra + "<p>The ratings are in <code>ratings.csv</code> (reader, modality, case, truth, rating): "
            "<code>radreview mrmc ratings.csv</code> repeats this analysis, and MRMCaov or RJafroc read the same file.</p>")


def _agreement_html(rep: dict) -> str:
    def kap(d: dict | None) -> str:
        if not d:
            return "n/a"
        if d["kappa"] is None:
            return f"n/a ({html.escape(d['reason'])})"
        ci = f" {_fmt(d['ci95'])}" if d["ci95"] else f" (no CI: {html.escape(d['reason'])})"
        return f"{d['kappa']:.3f}{ci}"

    rows = []
    for b in rep["readers"]:
        mc = b.get("mcnemar")
        mc_s = "n/a" if not mc else (f"{mc['to_correct']} / {mc['to_incorrect']}, p {_fmt(mc['p'])}" if mc["p"] is not None
                                     else f"{mc['to_correct']} / {mc['to_incorrect']} ({html.escape(mc['reason'])})")
        t = b.get("reading_time")
        if t and t["pairs"]:
            t_s = (f"{_fmt(t['first']['median'])} {_fmt(t['first']['iqr'])} vs {_fmt(t['second']['median'])} "
                   f"{_fmt(t['second']['iqr'])}; p {_fmt(t['wilcoxon_p'])}" +
                   (f" ({html.escape(t['reason'])})" if t["reason"] else ""))
        else:
            t_s = "n/a"
        d = b.get("kappa_vs_ai_detail", {})
        rows.append(f"<tr><td>{html.escape(b['reader'])}</td><td>{kap(d.get('unaided'))}</td><td>{kap(d.get('aided'))}"
                    f"</td><td>{mc_s}</td><td>{t_s}</td></tr>")
    fl = rep["agreement"]["fleiss_readers"]
    return ("<h2>Agreement and change</h2><table><tr><th>reader</th><th>Cohen's kappa vs AI, unaided (95% CI)</th>"
            "<th>Cohen's kappa vs AI, aided</th><th>McNemar: switches to correct / to incorrect</th>"
            "<th>reading time s, median [IQR] unaided vs revision; Wilcoxon</th></tr>" + "".join(rows) + "</table>"
            f"<p>Fleiss' kappa among readers: unaided {kap(fl['unaided'])}; aided {kap(fl['aided'])}.</p>")


def write_report(session: ReadingSession, out: str | os.PathLike) -> dict:
    """Write ``report.json`` (without the per-read rows), ``reads.csv`` (one row per read and
    phase, with truth and the AI's answer beside it), ``mrmc.json``, ``ratings.csv`` and
    ``mrmc_readers.png`` (when the MRMC analysis could be computed) and ``report.html`` with
    ``roc.png``, ``switches.png`` and ``times.png`` (matplotlib, Agg) into ``out``; returns the
    report dict with ``files``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rep = build_report(session)
    truth, _ = session.truth()
    ai = session.ai_results()
    model = session.models[0] if session.models else None
    with open(out / "reads.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["reader", "case_id", "phase", "state", "score", "positive", "truth", "ai_probability", "ai_positive",
                    "reading_seconds", "n_findings", "findings", "opened", "closed"])
        for r in rep["rows"]:
            a = ai.get(r["case"], {}).get(model) if model is not None else None
            w.writerow([r["reader"], r["case"], r["phase"], r["state"], r["score"], int(r["positive"]),
                        truth.get(r["case"], ""), "" if a is None else a["probability"], "" if a is None else int(a["positive"]),
                        r["seconds"], len(r["findings"]), json.dumps(r["findings"]), r["opened"], r["closed"]])
    figs = _plot(rep, out)
    table = rep.pop("ratings")
    mrmc_files = []
    if table is not None:
        mrmc.write_ratings_csv(table, out / "ratings.csv")
        plot_reader_aucs(rep["mrmc"], out / "mrmc_readers.png", rep["mrmc"]["labels"], order=["unaided", "aided"])
        mrmc_files = ["ratings.csv", "mrmc_readers.png"]
    (out / "mrmc.json").write_text(json.dumps(rep["mrmc"], indent=1))
    rep["files"] = ["report.json", "reads.csv", "report.html", "mrmc.json"] + mrmc_files + figs
    body = {k: v for k, v in rep.items() if k != "rows"}
    (out / "report.json").write_text(json.dumps(body, indent=1))

    def row(b):
        cells = [html.escape(b["reader"]), str(b["reads"])]
        for ph in ("unaided", "aided"):
            m = b[ph]
            cells += [_fmt(m and m["auc"]), _fmt(m and m["auc_ci95"]), _fmt(m and m["sensitivity"]),
                      _fmt(m and m["specificity"]), _fmt(m and m["median_seconds"])]
        s = b["switches"] or {}
        cells += [_fmt(s.get("total")), _fmt(s.get("toward_ai")), _fmt(s.get("to_correct")), _fmt(s.get("to_incorrect")),
                  _fmt(b["kappa_vs_ai"]["unaided"]), _fmt(b["kappa_vs_ai"]["aided"])]
        return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"

    a = rep["ai"]
    head = ("<tr><th>reader</th><th>reads</th>" + "".join(
        f"<th>{p} AUC</th><th>{p} AUC 95% CI</th><th>{p} sens</th><th>{p} spec</th><th>{p} median s</th>"
        for p in ("unaided", "aided")) + "<th>switches</th><th>toward AI</th><th>to correct</th><th>to incorrect</th>"
            "<th>kappa vs AI unaided</th><th>kappa vs AI aided</th></tr>")
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>radreview reading session report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #bbb;padding:3px 6px}}</style>
</head><body><h1>Reading session report</h1>
<p>Mode <b>{html.escape(rep['mode'])}</b>; question: {html.escape(rep['question'])}; {rep['cases']} cases
({rep['cases_with_truth']} with truth); seed {rep['seed']}.</p>
<h2>AI</h2><p>{html.escape(str(a['model']))}, threshold {_fmt(a['threshold'])}: AUC {_fmt(a['auc'])},
sensitivity {_fmt(a['sensitivity'])}, specificity {_fmt(a['specificity'])} ({a['cases_run']} cases run).</p>
<h2>Readers</h2><table>{head}{''.join(row(b) for b in rep['readers'])}{row(rep['pooled'])}</table>
<p>Reader positive = score &ge; {POSITIVE_SCORE:g}. CIs: {html.escape(rep['definitions']['ci'])}. n/a = not defined
(no truth, one class only, or no such phase in this mode).</p>
{_mrmc_html(rep["mrmc"])}
{_agreement_html(rep)}
<h2>Figures</h2><img src="roc.png" alt="ROC curves"><img src="switches.png" alt="switch chart"><img src="times.png" alt="reading times">
</body></html>"""
    (out / "report.html").write_text(doc)
    return rep
