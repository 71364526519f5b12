"""MRMC output for people: a plain-text summary, an HTML section and a figure (matplotlib, Agg).

GUI-free. Takes the dict of :func:`radreview.review.mrmc.analyse` (and optionally a power table
of :func:`radreview.review.mrmc.power_table`); used by ``radreview mrmc --out`` and by the
reading-session report.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["summary_text", "html_section", "plot_reader_aucs", "write_mrmc_outputs", "parse_range",
           "default_power_grid"]


def _n(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v + 0.0:.{digits}f}".replace("-0." + "0" * digits, "0." + "0" * digits)
    return str(v)


def _ci(ci: list | None, digits: int = 4) -> str:
    if not ci or ci[0] is None:
        return "n/a"
    return f"({ci[0]:.{digits}f}, {ci[1]:.{digits}f})"


def _p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def parse_range(text: str, what: str) -> list[int]:
    """``"A..B"`` (every integer), ``"A..B:STEP"`` or ``"N"`` -> a list of ints.

    Raises
    ------
    ValueError
        Not of that form, or A > B, or a value below 2.
    """
    try:
        if ".." in text:
            span, _, step_s = text.partition(":")
            a_s, b_s = span.split("..", 1)
            a, b = int(a_s), int(b_s)
            step = int(step_s) if step_s else (1 if b - a <= 12 else max(1, (b - a) // 6))
            if a > b or step < 1:
                raise ValueError
            vals = list(range(a, b + 1, step))
            if vals[-1] != b:
                vals.append(b)
        else:
            vals = [int(text)]
    except ValueError:
        raise ValueError(f"--{what} {text!r}: expected N, A..B or A..B:STEP with integers, A <= B") from None
    if min(vals) < 2:
        raise ValueError(f"--{what} {text!r}: at least 2 {what} are needed")
    return vals


def default_power_grid(readers: int, cases: int) -> tuple[list[int], list[int]]:
    """Readers and cases of a follow-up study's power table around a pilot of this size."""
    rd = sorted({max(2, readers), readers + 2, readers + 4, 2 * readers, 3 * readers})
    cs = sorted({max(10, cases), 2 * cases, 4 * cases, 8 * cases, 16 * cases})
    return rd, cs


def summary_text(res: dict, power_rows: list[dict] | None = None, effect: float | None = None) -> str:
    """A human-readable summary of the three analyses (what ``radreview mrmc`` prints)."""
    mods, rds = res["modalities"], res["readers"]
    lines = [f"{len(mods)} modalities, {len(rds)} readers, {res['cases']} cases ({res['negatives']} negative, "
             f"{res['positives']} positive); empirical AUC; covariance: {res['covariance']}", "",
             "reader AUCs:", "  reader  " + "".join(f"{m:>12}" for m in mods)]
    for rd in rds:
        lines.append(f"  {rd:<7} " + "".join(f"{res['auc'][m][rd]:>12.5f}" for m in mods))
    lines.append("  mean    " + "".join(f"{res['auc_mean'][m]:>12.5f}" for m in mods))
    vc = res["variance_components"]
    lines += ["", "OR variance components: " + ", ".join(f"{k} {_n(vc[k], 8)}" for k in vc), ""]
    a = res["rrrc"]
    lines += [f"warning: {w}" for w in res.get("warnings", [])]
    for key, title in (("rrrc", "random readers, random cases"), ("frrc", "fixed readers, random cases"),
                       ("rrfc", "random readers, fixed cases")):
        if res[key]["reason"]:
            lines.append(f"{title}: not defined: {res[key]['reason']}")
    if a["f"] is not None:
        lines.append(f"random readers, random cases: F({a['ndf']}, {_n(a['ddf'], 2)}) = {_n(a['f'], 3)}, "
                     f"p = {_p(a['p'])}")
        for cmp in a["comparisons"]:
            lines.append(f"  {cmp['a']} - {cmp['b']}: {cmp['difference']:+.5f}, 95% CI {_ci(cmp['ci95'], 5)}, "
                         f"p = {_p(cmp['p'])}")
        f = res["frrc"]
        lines.append(f"fixed readers, random cases: chi2({f['df']}) = {_n(f['chi2'], 3)}, p = {_p(f['p'])}")
        g = res["rrfc"]
        lines.append(f"random readers, fixed cases: F({g['ndf']}, {g['ddf']}) = {_n(g['f'], 3)}, p = {_p(g['p'])}")
    lines.append("single-modality AUC (random readers, random cases):")
    for s in a["single"]:
        lines.append(f"  {s['modality']}: {s['auc']:.5f}, 95% CI {_ci(s['ci95'], 5)}, df {_n(s['df'], 2)}")
    if power_rows:
        lines += ["", f"power (random readers, random cases; effect {effect:g}, alpha {res['alpha']:g}):"]
        cases = sorted({r['cases'] for r in power_rows})
        lines.append("  readers " + "".join(f"{c:>8}" for c in cases))
        for rd in sorted({r['readers'] for r in power_rows}):
            row = {r['cases']: r['power'] for r in power_rows if r['readers'] == rd}
            lines.append(f"  {rd:<7} " + "".join(f"{_n(row[c], 3):>8}" for c in cases))
    return "\n".join(lines)


def plot_reader_aucs(res: dict, path: str | os.PathLike, labels: dict[str, str] | None = None,
                     order: list[str] | None = None) -> None:
    """Each reader's AUC per modality (lines) with the random-reader random-case mean and 95 % CI;
    ``order`` sets the modalities' order along x (default: sorted)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    mods, rds = [m for m in (order or res["modalities"]) if m in res["modalities"]], res["readers"]
    names = [labels.get(m, m) if labels else m for m in mods]
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=100)
    x = list(range(len(mods)))
    for rd in rds:
        ax.plot(x, [res["auc"][m][rd] for m in mods], marker="o", lw=1, alpha=0.6, label=f"reader {rd}")
    single = {s["modality"]: s for s in res["rrrc"]["single"]}
    means = [single[m]["auc"] for m in mods]
    lo = [means[i] - (single[m]["ci95"][0] if single[m]["ci95"][0] is not None else means[i]) for i, m in enumerate(mods)]
    hi = [(single[m]["ci95"][1] if single[m]["ci95"][1] is not None else means[i]) - means[i] for i, m in enumerate(mods)]
    ax.errorbar(x, means, yerr=[lo, hi], color="black", lw=2.2, capsize=6, marker="s", label="mean, 95% CI (RRRC)")
    ax.set_xticks(x, names)
    lowest = min([means[i] - lo[i] for i in x] + [res["auc"][m][rd] for m in mods for rd in rds])
    ax.set(ylabel="AUC (empirical)", title="Reader AUCs by modality", ylim=(max(0.0, lowest - 0.05), 1.02))
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def html_section(res: dict, power_rows: list[dict] | None = None, effect: float | None = None,
                 labels: dict[str, str] | None = None, figure: str | None = None, heading: str = "h2",
                 order: list[str] | None = None) -> str:
    """An HTML fragment: reader AUCs, variance components, the three analyses, power and how to
    read it; ``order`` sets the modalities' column order (default: sorted)."""
    esc = html.escape
    mods, rds = [m for m in (order or res["modalities"]) if m in res["modalities"]], res["readers"]

    def name(m: str) -> str:
        return esc(labels.get(m, m) if labels else m)

    h3 = "h3" if heading == "h2" else "h4"
    out = [f"<{heading}>MRMC analysis (Obuchowski-Rockette, Hillis ddf)</{heading}>",
           f"<p>{len(mods)} modalities, {len(rds)} readers, {res['cases']} cases ({res['negatives']} negative, "
           f"{res['positives']} positive); figure of merit: empirical AUC; AUC covariance: "
           f"{esc(res['covariance'])}.</p>"]
    out.append("<table><tr><th>reader</th>" + "".join(f"<th>{name(m)}</th>" for m in mods) + "</tr>")
    for rd in rds:
        out.append(f"<tr><td>{esc(rd)}</td>" + "".join(f"<td>{res['auc'][m][rd]:.4f}</td>" for m in mods) + "</tr>")
    out.append("<tr><td><b>mean</b></td>" + "".join(f"<td><b>{res['auc_mean'][m]:.4f}</b></td>" for m in mods)
               + "</tr></table>")
    a, f, g = res["rrrc"], res["frrc"], res["rrfc"]
    for w in res.get("warnings", []):
        out.append(f"<p><b>Warning:</b> {esc(w)}.</p>")

    def test_line(block: dict, text: str) -> str:
        return f"<p>{text}</p>" if block["reason"] is None else f"<p>Not defined: {esc(block['reason'])}.</p>"

    if len(mods) > 1:
        out.append(f"<{h3}>Random readers, random cases (generalises to both)</{h3}>" + test_line(
            a, f"F({a['ndf']}, {_n(a['ddf'], 2)}) = {_n(a['f'], 3)}, p = {_p(a['p'])}"))
        out.append(_cmp_table(a["comparisons"], name, "t", True))
        out.append(f"<{h3}>Fixed readers, random cases (these readers only)</{h3}>" + test_line(
            f, f"&chi;&sup2;({f['df']}) = {_n(f['chi2'], 3)}, p = {_p(f['p'])}"))
        out.append(_cmp_table(f["comparisons"], name, "z", False))
        out.append(f"<{h3}>Random readers, fixed cases (these cases only)</{h3}>" + test_line(
            g, f"F({g['ndf']}, {g['ddf']}) = {_n(g['f'], 3)}, p = {_p(g['p'])}"))
        out.append(_cmp_table(g["comparisons"], name, "t", True))
    out.append(f"<{h3}>Single-modality AUC, 95 % CI</{h3}><table><tr><th>modality</th><th>AUC</th>"
               "<th>RRRC CI (df)</th><th>FRRC CI</th><th>RRFC CI</th></tr>")
    reasons = set()
    by_mod = {x["modality"]: x for x in a["single"]}, {x["modality"]: x for x in f["single"]}, \
        {x["modality"]: x for x in g["single"]}
    for s, sf, sg in ((by_mod[0][m], by_mod[1][m], by_mod[2][m]) for m in mods):
        reasons |= {x["reason"] for x in (s, sf, sg) if x.get("reason")}
        out.append(f"<tr><td>{name(s['modality'])}</td><td>{s['auc']:.4f}</td><td>{_ci(s['ci95'])} "
                   f"({_n(s['df'], 2)})</td><td>{_ci(sf['ci95'])}</td><td>{_ci(sg['ci95'])}</td></tr>")
    out.append("</table>" + "".join(f"<p>n/a: {esc(r)}.</p>" for r in sorted(reasons)))
    vc, corr = res["variance_components"], res["correlations"]
    out.append(f"<{h3}>OR variance components</{h3}><table><tr><th>component</th><th>estimate</th>"
               "<th>correlation</th></tr>")
    for k in ("var_r", "var_tr", "cov1", "cov2", "cov3", "var_error"):
        out.append(f"<tr><td>{k}</td><td>{_n(vc[k], 8)}</td><td>{_n(corr.get(k), 4)}</td></tr>")
    out.append("</table><p>ANOVA estimates: a negative value means the component is too small to estimate with "
               "this many readers and cases.</p>")
    if power_rows:
        cases = sorted({r["cases"] for r in power_rows})
        out.append(f"<{h3}>Power of a follow-up study</{h3}><p>Random readers and random cases, two modalities, "
                   f"AUC difference {effect:g}, alpha {res['alpha']:g}, from this study's variance components "
                   f"(Hillis, Obuchowski &amp; Berbaum 2011).</p><table><tr><th>readers \\ cases</th>"
                   + "".join(f"<th>{c}</th>" for c in cases) + "</tr>")
        for rd in sorted({r["readers"] for r in power_rows}):
            row = {r["cases"]: r["power"] for r in power_rows if r["readers"] == rd}
            out.append(f"<tr><td>{rd}</td>" + "".join(f"<td>{_n(row[c], 3)}</td>" for c in cases) + "</tr>")
        out.append("</table>")
    if figure:
        out.append(f'<img src="{esc(figure)}" alt="reader AUCs by modality">')
    out.append("<p><b>How to read it.</b> The random-readers random-cases result is the one to report: it says "
               "whether the modalities differ for readers and cases like these in general. A difference whose 95 % "
               "CI excludes 0 is significant at 5 %. The fixed-reader result holds for these readers only and the "
               "fixed-case result for these cases only; they are narrower for that reason. The power table says how "
               "likely a study of that size is to detect the stated difference.</p>")
    return "\n".join(out)


def _cmp_table(rows: list[dict], name, stat: str, has_df: bool) -> str:
    head = "<tr><th>comparison</th><th>difference</th><th>std err</th>" + ("<th>df</th>" if has_df else "") + \
        f"<th>{stat}</th><th>p</th><th>95 % CI</th></tr>"
    body = []
    for c in rows:
        body.append(f"<tr><td>{name(c['a'])} - {name(c['b'])}</td><td>{_n(c['difference'], 5)}</td>"
                    f"<td>{_n(c['stderr'], 5)}</td>" + (f"<td>{_n(c['df'], 2)}</td>" if has_df else "")
                    + f"<td>{_n(c[stat], 2)}</td><td>{_p(c['p'])}</td><td>{_ci(c['ci95'], 5)}</td></tr>")
    return "<table>" + head + "".join(body) + "</table>"


def write_mrmc_outputs(res: dict, out: str | os.PathLike, power_rows: list[dict] | None = None,
                       effect: float | None = None, labels: dict[str, str] | None = None) -> list[str]:
    """Write ``mrmc.json``, ``mrmc.html`` and ``mrmc_readers.png`` into ``out``; returns the names."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    body = dict(res)
    if power_rows is not None:
        body["power"] = {"analysis": "rrrc", "effect": effect, "alpha": res["alpha"], "table": power_rows}
    (out / "mrmc.json").write_text(json.dumps(body, indent=1))
    plot_reader_aucs(res, out / "mrmc_readers.png", labels)
    doc = ("<!doctype html><html><head><meta charset=\"utf-8\"><title>radreview MRMC analysis</title><style>"
           "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px;margin:0.5em 0}"
           "td,th{border:1px solid #bbb;padding:3px 6px}</style></head><body>"
           + html_section(res, power_rows, effect, labels, figure="mrmc_readers.png", heading="h1")
           + "</body></html>")
    (out / "mrmc.html").write_text(doc)
    return ["mrmc.json", "mrmc.html", "mrmc_readers.png"]
