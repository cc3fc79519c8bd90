"""What mAP(L) evaluation costs as N grows: sorting each query once for every L against once per L, and scoring
within pools (the paper's SD protocol) against over all N, side by side in one run.

Synthetic scores (no model): ``--queries`` test queries, ``--methods`` methods, the paper's three L plus the
report's six curve points, at each N of ``--n``; pools of ``--pool`` items.

    python benchmarks/evaluation_cost.py --n 2000 20000 118287 --json bench-results/evaluation_cost.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

CURVE = (0.002, 0.0042, 0.0085, 0.017, 0.034, 0.068)


def timed(score_sets, teacher, ls_per_call) -> float:
    """Seconds to compute mAP for every score matrix, one ``map_at_ls`` call per entry of ``ls_per_call``."""
    from fastgda.evaluation import map_at_ls

    began = time.perf_counter()
    for scores in score_sets:
        for ls in ls_per_call:
            map_at_ls(scores, teacher, ls)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[2000, 20000, 118287])
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--methods", type=int, default=5)
    parser.add_argument("--pool", type=int, default=256)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    from fastgda.evaluation import PAPER_L_FRACTIONS, l_values

    rng = np.random.default_rng(0)
    rows = []
    for n in args.n:
        ls = sorted(set(l_values(n, PAPER_L_FRACTIONS)) | set(l_values(n, CURVE)))
        teacher = np.argsort(-rng.random((args.queries, n)), axis=1)
        methods = [rng.random((args.queries, n)).astype(np.float32) for _ in range(args.methods)]
        per_l = timed(methods, teacher, [[L] for L in ls])
        once = timed(methods, teacher, [ls])
        k = min(args.pool, n)
        local = np.broadcast_to(np.arange(k), (args.queries, k))
        pooled = [m[:, :k] for m in methods]
        pool_ls = sorted(set(l_values(k, PAPER_L_FRACTIONS)) | set(l_values(k, CURVE)))
        within = timed(pooled, local, [pool_ls])
        rows.append(
            {"n": n, "ls": len(ls), "per_l_s": per_l, "once_s": once, "within_pools_s": within}
        )
    print(f"{args.queries} queries x {args.methods} methods; the paper's 3 L and the report's 6 curve points; "
          f"pools of {args.pool}")  # fmt: skip
    print()
    print(
        "| N | sorted once per L | sorted once per query | ratio | within pools of K | ratio to once |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']:,} | {r['per_l_s']:.2f} s | {r['once_s']:.2f} s | {r['per_l_s'] / r['once_s']:.1f}x "
              f"| {r['within_pools_s'] * 1e3:.0f} ms | {r['once_s'] / r['within_pools_s']:.0f}x |")  # fmt: skip
    first, last = rows[0], rows[-1]
    for key in ("per_l_s", "once_s", "within_pools_s"):
        slope = np.log(last[key] / first[key]) / np.log(last["n"] / first["n"])
        print(f"growth of {key[:-2]} with N: N^{slope:.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
