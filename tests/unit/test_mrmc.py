"""MRMC analysis against OR-DBM MRMC 2.51's published output on the FedRoc study.

The expected numbers are read from ``../shared/data/mrmc/fedroc-ordbm-output.txt`` (the program's
own text output), not typed in here; each value must agree with ours to the digits printed there,
within one unit of the last digit (reader AUCs and mean differences to 1e-6 as well).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest

from radreview.review import mrmc

RATINGS = "mrmc/fedroc.csv"
OUTPUT = "mrmc/fedroc-ordbm-output.txt"
NUM = r"-?\d+\.\d+|-?\d+"


def _digits(s: str) -> int:
    return len(s.split(".")[1]) if "." in s else 0


def close(ours: float, printed: str, what: str) -> None:
    """``ours`` agrees with the printed value within one unit of its last printed digit (the
    program's own rounding of intermediate quantiles shows in the 8th decimal of a few CIs)."""
    tol = 10 ** -_digits(printed) + 1e-12
    assert ours == pytest.approx(float(printed), abs=tol), f"{what}: ours {ours!r}, printed {printed}"


@pytest.fixture(scope="module")
def published(data_dir) -> str:
    return (data_dir / OUTPUT).read_text()


@pytest.fixture(scope="module")
def table(data_dir) -> mrmc.RatingsTable:
    return mrmc.read_ratings_csv(data_dir / RATINGS)


@pytest.fixture(scope="module")
def res(table) -> dict:
    return mrmc.analyse(table, covariance="jackknife")


def section(text: str, start: str, end: str | None = None) -> str:
    i = text.index(start)
    j = text.index(end, i + len(start)) if end else len(text)
    return text[i:j]


def rows(block: str, pattern: str) -> list[tuple[str, ...]]:
    return re.findall(pattern, block, flags=re.M)


def test_design_and_reader_aucs(published, table, res):
    t, r, c = table.shape
    m = re.search(r"(\d+) treatments, (\d+) readers, (\d+) cases \((\d+) normal, (\d+) abnormal\)", published)
    assert (t, r, c, res["negatives"], res["positives"]) == tuple(int(x) for x in m.groups())
    block = section(published, "TREATMENT x READER AUC ESTIMATES", "TREATMENT AUC MEANS")
    got = rows(block, rf"^\s+(\d+)\s+({NUM})\s+({NUM})\s+({NUM})\s+({NUM})\s+({NUM})\s*$")
    assert len(got) == r
    for j, row in enumerate(got):
        for i, v in enumerate(row[1:]):
            ours = res["auc"][res["modalities"][i]][res["readers"][j]]
            assert abs(ours - float(v)) <= 1e-6, (i, j)
    block = section(published, "TREATMENT AUC MEANS", "TREATMENT AUC MEAN DIFFERENCES")
    for i, v in rows(block, rf"^\s+(\d+)\s+({NUM})\s*$"):
        assert abs(res["auc_mean"][i] - float(v)) <= 1e-6
    block = section(published, "TREATMENT AUC MEAN DIFFERENCES", "ANOVA Tables")
    diffs = rows(block, rf"^\s+(\d+) - (\d+)\s+({NUM})\s*$")
    assert len(diffs) == len(res["rrrc"]["comparisons"]) == 10
    for (a, b, v), cmp in zip(diffs, res["rrrc"]["comparisons"]):
        assert (cmp["a"], cmp["b"]) == (a, b)
        assert abs(cmp["difference"] - float(v)) <= 1e-6


def test_anova_tables_and_variance_components(published, res):
    block = section(published, "TREATMENT X READER ANOVA of AUCs", "READER ANOVAs")
    got = {s: (ss, df, ms) for s, ss, df, ms in rows(block, rf"^\s+(T\*R|T|R)\s+({NUM})\s+(\d+)\s+({NUM})\s*$")}
    assert set(got) == {"T", "R", "T*R"}
    for key, name in (("t", "T"), ("r", "R"), ("tr", "T*R")):
        close(res["anova"]["ss"][key], got[name][0], f"SS {name}")
        assert res["anova"]["df"][key] == int(got[name][1])
        close(res["anova"]["ms"][key], got[name][2], f"MS {name}")
    block = section(published, "READER ANOVAs of AUCs for each treatment", "Variance component")
    ms_r = rows(block, rf"^\s+R\s+\d+\s+({NUM})\s+({NUM})\s+({NUM})\s+({NUM})\s+({NUM})\s*$")[0]
    for m, v in zip(res["modalities"], ms_r):
        close(res["by_modality"][m]["ms_r"], v, f"MS(R) modality {m}")

    block = section(published, "Obuchowski-Rockette variance component", "Corresponding DBM")
    names = {"Var(R)": "var_r", "Var(T*R)": "var_tr", "COV1": "cov1", "COV2": "cov2", "COV3": "cov3",
             "Var(Error)": "var_error"}
    seen = 0
    for label, key in names.items():
        m = re.search(rf"^\s*{re.escape(label)}\s+({NUM})(?:\s+({NUM}))?\s*$", block, flags=re.M)
        close(res["variance_components"][key], m.group(1), label)
        if m.group(2):
            close(res["correlations"][key], m.group(2), f"correlation {label}")
        seen += 1
    assert seen == 6
    block = section(published, "Corresponding DBM variance component", "Analysis 1")
    dbm = {"Var(R)": "var_r", "Var(C)": "var_c", "Var(T*R)": "var_tr", "Var(T*C)": "var_tc", "Var(R*C)": "var_rc",
           "Var(T*R*C) + Var(Error)": "var_trc_error"}
    for label, key in dbm.items():
        m = re.search(rf"^\s*{re.escape(label)}\s+({NUM})\s*$", block, flags=re.M)
        close(res["dbm_variance_components"][key], m.group(1), f"DBM {label}")
    # the DBM and OR reader and interaction components are the same quantities (Hillis et al. 2005)
    assert res["dbm_variance_components"]["var_r"] == pytest.approx(res["variance_components"]["var_r"], rel=1e-9)
    assert res["dbm_variance_components"]["var_tr"] == pytest.approx(res["variance_components"]["var_tr"], abs=1e-12)


def _check_comparisons(block: str, ours: list[dict], with_df: bool, stat: str) -> None:
    if with_df:
        pat = rf"^\s+(\d+) - (\d+)\s+({NUM})\s+({NUM})\s+({NUM})\s+({NUM})\s+({NUM})\s+\(\s*({NUM})\s*,\s*({NUM})\)"
    else:
        pat = rf"^\s+(\d+) - (\d+)\s+({NUM})\s+({NUM})\s+({NUM})\s+({NUM})\s+\(\s*({NUM})\s*,\s*({NUM})\)"
    got = rows(block, pat)
    assert len(got) == len(ours) == 10
    for g, o in zip(got, ours):
        assert (o["a"], o["b"]) == g[:2]
        vals = list(g[2:])
        close(o["difference"], vals.pop(0), "difference")
        close(o["stderr"], vals.pop(0), "stderr")
        if with_df:
            close(o["df"], vals.pop(0), "df")
        close(o[stat], vals.pop(0), stat)
        close(o["p"], vals.pop(0), "p")
        close(o["ci95"][0], vals.pop(0), "CI low")
        close(o["ci95"][1], vals.pop(0), "CI high")


def test_random_readers_random_cases(published, res):
    a = res["rrrc"]
    block = section(published, "Analysis 1 (OR Analysis)", "Analysis 2 (OR Analysis)")
    m = re.search(rf"Treatment\s+(\d+)\s+({NUM})\s+({NUM})\s+({NUM})\s*\n\s*Error term\s+({NUM})\s+({NUM})", block)
    assert a["ndf"] == int(m.group(1))
    close(a["f"], m.group(3), "F")
    close(a["p"], m.group(4), "p")
    close(a["ddf"], m.group(5), "ddf_H")
    close(a["error_term"], m.group(6), "error term")
    _check_comparisons(section(block, "b) 95% confidence intervals", "c) Single-treatment"), a["comparisons"], True, "t")
    single = rows(section(block, "c) Single-treatment"),
                  rf"^\s+(\d)\s+({NUM})\s+({NUM})\s+({NUM})\s+\(({NUM}) , ({NUM})\)\s+({NUM})\s*$")
    assert len(single) == 5
    for g, o in zip(single, a["single"]):
        assert o["modality"] == g[0]
        for key, v in zip(("auc", "stderr", "df"), g[1:4]):
            close(o[key], v, f"single {key}")
        close(o["ci95"][0], g[4], "single CI low")
        close(o["ci95"][1], g[5], "single CI high")
        close(o["cov2"], g[6], "single cov2")


def test_fixed_readers_random_cases(published, res):
    f = res["frrc"]
    block = section(published, "Analysis 2 (OR Analysis)", "Analysis 3 (OR Analysis)")
    m = re.search(rf"^\s+({NUM})\s+(\d+)\s+({NUM})\s*$", section(block, "X2 value"), flags=re.M)
    close(f["chi2"], m.group(1), "chi2")
    assert f["df"] == int(m.group(2))
    close(f["p"], m.group(3), "p")
    _check_comparisons(section(block, "b) 95% confidence intervals", "c) Single treatment"), f["comparisons"], False, "z")
    c_block = section(block, "c) Single treatment", "d) Single-reader")
    single = rows(c_block, rf"^\s+(\d)\s+({NUM})\s+({NUM})\s+\(({NUM}) , ({NUM})\)\s*$")
    assert len(single) == 5
    for g, o in zip(single, f["single"]):
        close(o["auc"], g[1], "auc")
        close(o["stderr"], g[2], "stderr")
        close(o["ci95"][0], g[3], "CI low")
        close(o["ci95"][1], g[4], "CI high")
    varcov = rows(section(c_block, "Treatment  Var(Error)"), rf"^\s+(\d)\s+({NUM})\s+({NUM})\s*$")
    assert len(varcov) == 5
    for mod, ve, c2 in varcov:
        close(res["by_modality"][mod]["var_error"], ve, "var_error by modality")
        close(res["by_modality"][mod]["cov2"], c2, "cov2 by modality")
    d_block = section(block, "d) Single-reader")
    got = rows(d_block, rf"^\s+(\d)?\s+(\d) - (\d)\s+({NUM})\s+({NUM})\s+({NUM})\s+({NUM})\s+\(\s*({NUM})\s*,\s*({NUM})\)")
    assert len(got) == len(f["by_reader"]) == 40
    for g, o in zip(got, f["by_reader"]):
        assert (o["a"], o["b"]) == g[1:3]
        for key, v in zip(("difference", "stderr", "z", "p"), g[3:7]):
            close(o[key], v, f"reader {o['reader']} {key}")
        close(o["ci95"][0], g[7], "CI low")
        close(o["ci95"][1], g[8], "CI high")
    per_reader = rows(section(d_block, "Reader  Var(Error)"), rf"^\s+(\d)\s+({NUM})\s+({NUM})\s*$")
    assert len(per_reader) == 4
    for (_, ve, c1), rd in zip(per_reader, res["readers"]):
        close(res["by_reader"][rd]["var_error"], ve, "var_error by reader")
        close(res["by_reader"][rd]["cov1"], c1, "cov1 by reader")


def test_random_readers_fixed_cases(published, res):
    g = res["rrfc"]
    block = section(published, "Analysis 3 (OR Analysis)", "REFERENCES")
    m = re.search(rf"Treatment\s+(\d+)\s+({NUM})\s+({NUM})\s+({NUM})\s*\n\s*T\*R\s+(\d+)\s+({NUM})", block)
    assert g["ndf"] == int(m.group(1)) and g["ddf"] == int(m.group(5))
    close(g["f"], m.group(3), "F")
    close(g["p"], m.group(4), "p")
    _check_comparisons(section(block, "b) 95% confidence intervals", "c) Single treatment"), g["comparisons"], True, "t")
    single = rows(section(block, "c) Single treatment"),
                  rf"^\s+(\d)\s+({NUM})\s+({NUM})\s+({NUM})\s+(\d+)\s+\(({NUM}) , ({NUM})\)\s*$")
    assert len(single) == 5
    for s, o in zip(single, g["single"]):
        for key, v in zip(("auc", "ms_r", "stderr", "df"), s[1:5]):
            close(o[key], v, f"rrfc single {key}")
        close(o["ci95"][0], s[5], "CI low")
        close(o["ci95"][1], s[6], "CI high")


def test_cli_json_reproduces_the_published_output(data_dir, published, res):
    out = subprocess.run([sys.executable, "-m", "radreview.viewer.cli", "mrmc", str(data_dir / RATINGS), "--json"],
                         capture_output=True, text=True, check=True)
    body = json.loads(out.stdout)
    for key in ("readers", "modalities", "cases", "positives", "negatives", "covariance", "auc", "auc_mean",
                "variance_components", "rrrc", "frrc", "rrfc"):
        assert key in body, key
    assert body["covariance"] == "jackknife"
    assert all(isinstance(m, str) for m in body["modalities"]) and all(isinstance(r, str) for r in body["readers"])
    assert body["auc"] == res["auc"]
    for key in ("f", "ndf", "ddf", "p"):
        assert body["rrrc"][key] == res["rrrc"][key]
    assert set(body["rrrc"]["comparisons"][0]) >= {"a", "b", "difference", "stderr", "df", "t", "p", "ci95"}
    assert set(body["frrc"]["comparisons"][0]) >= {"a", "b", "difference", "stderr", "z", "p", "ci95"}
    assert set(body["variance_components"]) == {"var_r", "var_tr", "cov1", "cov2", "cov3", "var_error"}
    m = re.search(rf"\[F\(4,17\) = ({NUM}), p = (\.\d+)\]", published)
    close(body["rrrc"]["f"], m.group(1), "F")
    close(body["rrrc"]["p"], "0" + m.group(2), "p")


def test_auc_equals_scikit_learn_and_delong_matches_a_direct_computation(table):
    from sklearn.metrics import roc_auc_score

    theta = mrmc.empirical_auc(table.ratings, table.truth)
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            assert theta[i, j] == pytest.approx(roc_auc_score(table.truth, table.ratings[i, j]), abs=1e-12)
    # DeLong (1988) from the full kernel matrix psi(x_pos, y_neg), written out independently
    cov = mrmc.auc_covariance(table, "delong")
    pos, neg = table.truth == 1, table.truth == 0
    comps10, comps01 = [], []
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            x, y = table.ratings[i, j, pos], table.ratings[i, j, neg]
            psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
            comps10.append(psi.mean(axis=1))
            comps01.append(psi.mean(axis=0))
    direct = np.cov(np.array(comps10)) / pos.sum() + np.cov(np.array(comps01)) / neg.sum()
    np.testing.assert_allclose(cov.reshape(direct.shape), direct, rtol=1e-10, atol=1e-14)
    # DeLong and the jackknife agree closely for 200 cases; the bootstrap is near and seeded
    jk = mrmc.auc_covariance(table, "jackknife")
    d_jk, d_dl = np.diagonal(jk.reshape(20, 20)), np.diagonal(cov.reshape(20, 20))
    assert np.all(np.abs(d_dl / d_jk - 1) < 0.03)
    b1 = mrmc.auc_covariance(table, "bootstrap", n_bootstrap=400, seed=3)
    b2 = mrmc.auc_covariance(table, "bootstrap", n_bootstrap=400, seed=3)
    np.testing.assert_array_equal(b1, b2)
    d_bs = np.diagonal(b1.reshape(20, 20))
    assert np.median(np.abs(d_bs / d_jk - 1)) < 0.2


def test_other_covariances_give_a_complete_analysis(table):
    for method in ("delong", "bootstrap"):
        res = mrmc.analyse(table, covariance=method, n_bootstrap=300, seed=1)
        assert res["covariance"] == method and res["dbm_variance_components"] is None
        assert 0 < res["rrrc"]["p"] < 1 and res["rrrc"]["ddf"] > 0
        assert res["variance_components"]["var_error"] > res["variance_components"]["cov1"] > 0


def test_two_modalities_f_is_the_square_of_t(table):
    sub = mrmc.RatingsTable(table.modalities[:2], table.readers, table.cases, table.truth, table.ratings[:2])
    res = mrmc.analyse(sub)
    for key in ("rrrc", "rrfc"):
        assert res[key]["f"] == pytest.approx(res[key]["comparisons"][0]["t"] ** 2, rel=1e-10)
        assert res[key]["p"] == pytest.approx(res[key]["comparisons"][0]["p"], rel=1e-8)
    assert res["frrc"]["chi2"] == pytest.approx(res["frrc"]["comparisons"][0]["z"] ** 2, rel=1e-10)


def test_power_by_or_and_dbm_components_agree_and_behave(table, res):
    """Hillis, Obuchowski & Berbaum (2011): power from OR components equals power from the DBM
    components of the same pilot. The DBM formula is written out here independently."""
    from scipy import stats

    vc, dbm = res["variance_components"], res["dbm_variance_components"]
    c = table.shape[2]
    for readers, cases, effect in ((4, 200, 0.05), (6, 300, 0.04), (10, 120, 0.06)):
        ours = mrmc.power(vc, effect, readers, cases, pilot_cases=c)
        den = max(0, dbm["var_tr"]) + (dbm["var_trc_error"] + readers * max(dbm["var_tc"], 0)) / cases
        ddf = den ** 2 / ((max(0, dbm["var_tr"]) + dbm["var_trc_error"] / cases) ** 2 / (readers - 1))
        ncp = effect ** 2 * readers / 2 / den
        crit = stats.f.ppf(0.95, 1, ddf)
        assert ours["ddf"] == pytest.approx(ddf, rel=1e-8)
        assert ours["power"] == pytest.approx(stats.ncf.sf(crit, 1, ddf, ncp), rel=1e-8)
    grid = mrmc.power_table(vc, 0.05, [4, 8], [100, 400], pilot_cases=c)
    p = {(g["readers"], g["cases"]): g["power"] for g in grid}
    assert p[(4, 100)] < p[(4, 400)] < p[(8, 400)] and p[(4, 100)] < p[(8, 100)]
    assert mrmc.power(vc, 1e-9, 5, 200, pilot_cases=c)["power"] == pytest.approx(0.05, abs=1e-6)
    for analysis in ("frrc", "rrfc"):
        assert 0.05 < mrmc.power(vc, 0.05, 5, 200, pilot_cases=c, analysis=analysis)["power"] < 1


BAD = {
    "missing_cell": ("reader,modality,case,truth,rating\n1,A,c1,1,3\n1,A,c2,0,1\n1,B,c1,1,2\n2,A,c1,1,3\n"
                     "2,A,c2,0,2\n2,B,c1,1,3\n2,B,c2,0,1\n", "reader '1' has no rating for case 'c2' in modality 'B'"),
    "two_truths": ("reader,modality,case,truth,rating\n1,A,c1,1,3\n1,A,c2,0,1\n2,A,c1,0,3\n",
                   "row 4: case 'c1' has truth 0 here but 1 in row 2"),
    "one_reader": ("reader,modality,case,truth,rating\n1,A,c1,1,3\n1,A,c2,0,1\n", "1 reader(s)"),
    "one_class": ("reader,modality,case,truth,rating\n1,A,c1,1,3\n1,A,c2,1,1\n2,A,c1,1,3\n2,A,c2,1,1\n",
                  "every case is diseased"),
    "non_numeric": ("reader,modality,case,truth,rating\n1,A,c1,1,3\n1,A,c2,0,high\n", "row 3: rating 'high'"),
    "nan_rating": ("reader,modality,case,truth,rating\n1,A,c1,1,nan\n", "row 2: rating 'nan' is not finite"),
    "bad_truth": ("reader,modality,case,truth,rating\n1,A,c1,2,3\n", "row 2: truth '2' is not 0 or 1"),
    "duplicate": ("reader,modality,case,truth,rating\n1,A,c1,1,3\n1,A,c1,1,4\n", "row 3: a second rating"),
    "no_column": ("reader,modality,case,rating\n1,A,c1,3\n", "row 1: header lacks truth"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_ratings_exit_2_with_one_line_naming_the_problem(tmp_path, name):
    text, expect = BAD[name]
    f = tmp_path / f"{name}.csv"
    f.write_text(text)
    out = subprocess.run([sys.executable, "-m", "radreview.viewer.cli", "mrmc", str(f), "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("radreview: error: ") and str(f) in lines[0]
    assert expect in lines[0]


def test_cli_power_table_and_outputs(tmp_path, data_dir, res):
    out = subprocess.run([sys.executable, "-m", "radreview.viewer.cli", "mrmc", str(data_dir / RATINGS), "--json",
                          "--power", "--effect", "0.05", "--readers", "4..8:2", "--cases", "100..300:100",
                          "--out", str(tmp_path / "o")], capture_output=True, text=True, check=True)
    body = json.loads(out.stdout)
    table = body["power"]["table"]
    assert [(r["readers"], r["cases"]) for r in table] == [(rd, c) for rd in (4, 6, 8) for c in (100, 200, 300)]
    want = mrmc.power(res["variance_components"], 0.05, 6, 200, pilot_cases=200)["power"]
    assert next(r["power"] for r in table if (r["readers"], r["cases"]) == (6, 200)) == pytest.approx(want)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["mrmc.html", "mrmc.json", "mrmc_readers.png"]
    doc = (tmp_path / "o" / "mrmc.html").read_text()
    assert "Random readers, random cases" in doc and "Power of a follow-up study" in doc
    bad = subprocess.run([sys.executable, "-m", "radreview.viewer.cli", "mrmc", str(data_dir / RATINGS), "--power",
                          "--readers", "9..3"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--readers '9..3'" in bad.stderr
    assert not math.isnan(body["rrrc"]["f"])
