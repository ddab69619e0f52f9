"""Does `kilnet bench` measure what it claims (issue 23)? Runs `kilnet bench --quick` twice in one
process (its default: libraries in rotating order, each starting with the others' pools idle)
and once with every library in a separate process per round (--per-process), and compares each
row's peer/kilnet ratio: every ratio of the two in-process runs should be within +-20% of the
per-process one.

    python benchmarks/bench_agreement.py [--threads 1 2] [--only gemm,rnn] [--tolerance 0.2]

Prints one line per (threads, row, peer) with the three ratios and whether they agree, then a
summary; rows the stall detector flagged in any run are marked. Measured, never asserted.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine_info import machine  # noqa: E402

from kilnet import bench  # noqa: E402


def ratios(rows):
    """{(threads, family, shape, peer): peer time / kilnet time} and the set of flagged keys."""
    out, flagged = {}, set()
    for r in rows:
        for peer in ("numpy", "torch"):
            ratio = r[f"{peer}_ratio"]
            if ratio is not None:
                key = (r["threads"], r["family"], r["shape"], peer)
                out[key] = ratio
                if peer in r["stalled"] or "kilnet" in r["stalled"]:
                    flagged.add(key)
    return out, flagged


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", nargs="+", default=None)
    ap.add_argument("--only", default="")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--tolerance", type=float, default=0.2)
    args = ap.parse_args(argv)
    print(machine())
    quiet = lambda *_: None
    kw = dict(threads=args.threads, quick=True, only=args.only, rounds=args.rounds, out=quiet)
    runs = [ratios(bench.run(**kw)), ratios(bench.run(**kw)), ratios(bench.run(per_process=True, **kw))]
    (a, fa), (b, fb), (ref, fr) = runs
    flagged = fa | fb | fr
    print(f"ratio = peer time / kilnet time; agree: both in-process runs within +-{args.tolerance:.0%} "
          "of the per-process ratio; ! = a time flagged by the stall detector")
    print("| threads | row | peer | in-process 1 | in-process 2 | per-process | agree |")
    print("|---|---|---|---|---|---|---|")
    n_ok = n = 0
    for key in ref:
        if key not in a or key not in b:
            continue
        ok = all(abs(x / ref[key] - 1) <= args.tolerance for x in (a[key], b[key]))
        n, n_ok = n + 1, n_ok + ok
        t, fam, shape, peer = key
        print(f"| {t} | {fam} {shape} | {peer} | {a[key]:.2f} | {b[key]:.2f} | {ref[key]:.2f} | "
              f"{'yes' if ok else 'NO'}{' !' if key in flagged else ''} |")
    print(f"agreement: {n_ok} of {n} ratios within +-{args.tolerance:.0%}")


if __name__ == "__main__":
    main()
