"""``radreview mrmc RATINGS.csv [--json] [--covariance jackknife|delong|bootstrap] [--out DIR]
[--power --effect D --readers A..B --cases C..D]``: Obuchowski-Rockette MRMC analysis."""

from __future__ import annotations

import json

from . import CliError


def _mrmc(args) -> int:
    from radreview.review import mrmc
    from radreview.review.mrmc_report import (default_power_grid, parse_range, summary_text,
                                              write_mrmc_outputs)

    table = mrmc.read_ratings_csv(args.ratings)
    res = mrmc.analyse(table, covariance=args.covariance, alpha=args.alpha, n_bootstrap=args.bootstrap,
                       seed=args.seed)
    rows = effect = None
    if args.power or args.effect is not None or args.readers or args.cases:
        if len(table.modalities) < 2:
            raise CliError(f"{args.ratings}: power needs the variance components of at least 2 modalities")
        if args.effect is None:
            effect = max(abs(c["difference"]) for c in res["rrrc"]["comparisons"])
        else:
            effect = abs(args.effect)
        if not effect > 0:
            raise CliError("--effect must be a non-zero AUC difference")
        t, r, c = table.shape
        d_readers, d_cases = default_power_grid(r, c)
        try:
            readers = parse_range(args.readers, "readers") if args.readers else d_readers
            cases = parse_range(args.cases, "cases") if args.cases else d_cases
        except ValueError as exc:
            raise CliError(str(exc)) from None
        rows = mrmc.power_table(res["variance_components"], effect, readers, cases, pilot_cases=c, alpha=args.alpha)
    if args.out:
        write_mrmc_outputs(res, args.out, rows, effect)
    if args.json:
        body = dict(res)
        if rows is not None:
            body["power"] = {"analysis": "rrrc", "effect": effect, "alpha": args.alpha, "table": rows}
        print(json.dumps(body, indent=1))
    else:
        print(summary_text(res, rows, effect))
    return 0


def add_subparser(sub) -> None:
    p = sub.add_parser("mrmc", help="multi-reader multi-case ROC analysis (Obuchowski-Rockette, Hillis ddf) "
                                    "of a ratings CSV")
    p.add_argument("ratings", help="CSV with one row per rating: reader,modality,case,truth,rating (truth 1 = diseased)")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.add_argument("--covariance", choices=("jackknife", "delong", "bootstrap"), default="jackknife",
                   help="how the AUC covariance over cases is estimated (default: jackknife, as OR-DBM MRMC)")
    p.add_argument("--bootstrap", type=int, default=2000, help="resamples for --covariance bootstrap")
    p.add_argument("--seed", type=int, default=0, help="seed for --covariance bootstrap")
    p.add_argument("--alpha", type=float, default=0.05, help="two-sided level (default 0.05: 95%% intervals)")
    p.add_argument("--out", default=None, help="folder for mrmc.json, mrmc.html and mrmc_readers.png")
    p.add_argument("--power", action="store_true", help="add a power table for a follow-up two-modality study")
    p.add_argument("--effect", type=float, default=None,
                   help="AUC difference for --power (default: the largest observed difference)")
    p.add_argument("--readers", default=None, help="readers of the planned study: N, A..B or A..B:STEP")
    p.add_argument("--cases", default=None, help="cases of the planned study: N, A..B or A..B:STEP")
    p.set_defaults(func=_mrmc)
