"""Frequent-itemset mining at scale: our path (ml_tasks.association) against pyfim, mlxtend's
fpgrowth and apriori, on the same synthetic long-tail baskets.

    .venv/bin/python -m bench.association --baskets 1000000 --skus 5000 --min-support 0.0003 --runs 3

- The baskets: --baskets baskets of 1 + Poisson(--mean-extra) items drawn from a Zipf-like
  popularity over --skus skus, plus planted groups of 2-5 skus bought together (each member with
  probability 0.8 when its group is in the basket), so itemsets of up to 5 items are frequent; seeded.
- Each tool runs --runs times, each run in its own process under a time cap (--timeout) and an
  address-space cap (--memory-gb): a run over either is reported as "did not finish". The child
  loads the baskets, builds the tool's input (not timed: `prepare_seconds`), mines (timed:
  `seconds`), and reports its peak RSS (getrusage, input included; `rss_before_mib` is the peak
  before mining) and its itemsets by size and a digest of (itemset, count) pairs.
- Inputs: ours takes the long (basket id, item) arrays as production does (coding them is timed);
  pyfim a list of transactions; mlxtend the dense boolean basket x sku DataFrame its docs use
  (apriori in its low_memory mode).
- An itemset is frequent in at least ceil(min_support x baskets) baskets, passed to each tool so
  that all count alike (pyfim: an absolute count; mlxtend: a share half a basket below it).
- Prints JSON lines: each run, then per tool the medians, whether its itemsets equal ours, and its
  time and memory as ratios to pyfim's. pyfim (a C library that compiles from source) is optional:
  `.venv/bin/pip install pyfim`; absent, it reports "not installed".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOOLS = ("ours", "pyfim", "mlxtend_fpgrowth", "mlxtend_apriori")
# Planted groups: (size, share of baskets holding the group).
PLANTED = ((5, 0.003), (5, 0.002), (4, 0.004), (4, 0.003), (4, 0.0025), (3, 0.006), (3, 0.005), (3, 0.004),
           (2, 0.01), (2, 0.008))


def synthetic_baskets(baskets: int, skus: int, seed: int = 0, mean_extra: float = 2.0,
                      exponent: float = 1.05, planted: tuple[tuple[int, float], ...] = PLANTED) -> tuple[np.ndarray, np.ndarray]:
    """(basket ids, sku codes), one entry per basket and sku, sorted by basket then sku."""
    rng = np.random.default_rng(seed)
    sizes = 1 + rng.poisson(mean_extra, baskets)
    popularity = 1.0 / np.arange(1, skus + 1) ** exponent
    drawn = np.searchsorted(np.cumsum(popularity / popularity.sum()), rng.random(int(sizes.sum())))
    owners = [np.repeat(np.arange(baskets), sizes)]
    items = [np.minimum(drawn, skus - 1)]
    # Groups from the middle of the popularity ranking, disjoint.
    middle = rng.permutation(np.arange(min(20, skus // 4), max(skus // 2, 21)))
    start = 0
    for size, share in planted:
        members = middle[start:start + size]
        start += size
        holding = np.flatnonzero(rng.random(baskets) < share)
        for member in members:
            kept = holding[rng.random(len(holding)) < 0.8]
            owners.append(kept)
            items.append(np.full(len(kept), member))
    keys = np.unique(np.concatenate(owners).astype(np.int64) * skus + np.concatenate(items))
    return keys // skus, keys % skus


def _digest(pairs: list[tuple[tuple[int, ...], int]]) -> tuple[str, dict[str, int]]:
    canonical = sorted((tuple(sorted(int(i) for i in itemset)), int(count)) for itemset, count in pairs)
    sizes: dict[str, int] = {}
    for itemset, _ in canonical:
        sizes[str(len(itemset))] = sizes.get(str(len(itemset)), 0) + 1
    return hashlib.sha256(repr(canonical).encode()).hexdigest()[:16], dict(sorted(sizes.items(), key=lambda kv: int(kv[0])))


def _child(tool: str, data: Path, min_count: int, max_length: int) -> None:
    """One run of one tool; prints its JSON line."""
    loaded = np.load(data)
    basket_ids, items = loaded["baskets"], loaded["items"]
    n_baskets, n_skus = int(loaded["shape"][0]), int(loaded["shape"][1])
    started = time.perf_counter()
    if tool == "ours":
        import scipy.sparse  # noqa: F401  (imported once by a production run too; not the mining)

        from ml_tasks.association import frequent_itemsets

        prepared = None
    elif tool == "pyfim":
        try:
            import fim
        except ImportError:
            print(json.dumps({"tool": tool, "status": "not installed"}))
            return
        bounds = np.searchsorted(basket_ids, np.arange(n_baskets + 1))
        flat = items.tolist()
        prepared = [flat[bounds[i]:bounds[i + 1]] for i in range(n_baskets)]
    else:
        import pandas as pd

        dense = np.zeros((n_baskets, n_skus), dtype=bool)
        dense[basket_ids, items] = True
        prepared = pd.DataFrame(dense, columns=list(range(n_skus)), copy=False)
        del dense
    prepare_seconds = time.perf_counter() - started
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if tool == "ours":
        found = frequent_itemsets(basket_ids, items, min_count, max_length)
        pairs = [(tuple(found.labels[list(itemset)]), count) for itemset, count in zip(found.itemsets, found.counts.tolist())]
    elif tool == "pyfim":
        pairs = [(itemset, count) for itemset, count in
                 fim.fpgrowth(prepared, target="s", supp=-min_count, zmin=1, zmax=max_length, report="a")]
    else:
        from mlxtend.frequent_patterns import apriori, fpgrowth

        # apriori's low_memory mode: its default builds every candidate's columns at once and
        # needs several more GB on top of the dense baskets at a million baskets.
        options = {} if tool == "mlxtend_fpgrowth" else {"low_memory": True}
        miner = fpgrowth if tool == "mlxtend_fpgrowth" else apriori
        frame = miner(prepared, min_support=(min_count - 0.5) / n_baskets, use_colnames=True, max_len=max_length, **options)
        pairs = [(tuple(itemset), round(support * n_baskets)) for itemset, support in zip(frame["itemsets"], frame["support"])]
    seconds = time.perf_counter() - started
    digest, sizes = _digest(pairs)
    print(json.dumps({
        "tool": tool, "status": "ok", "seconds": round(seconds, 3), "prepare_seconds": round(prepare_seconds, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_before_mib": round(rss_before / 1024), "itemsets": sum(sizes.values()), "itemsets_by_size": sizes,
        "digest": digest,
    }))


def run_once(tool: str, data: Path, min_count: int, max_length: int, timeout: float, memory_gb: float) -> dict:
    limit = int(memory_gb * 2**30)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    command = [sys.executable, "-m", "bench.association", "--child", tool, "--data", str(data),
               "--min-count", str(min_count), "--max-length", str(max_length)]
    started = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, preexec_fn=cap,
                                cwd=Path(__file__).resolve().parents[1])
    except subprocess.TimeoutExpired:
        return {"tool": tool, "status": f"did not finish: over {timeout:g} s"}
    if result.returncode != 0:
        out_of_memory = "MemoryError" in result.stderr or "Unable to allocate" in result.stderr or result.returncode < 0
        reason = f"over {memory_gb:g} GB" if out_of_memory else result.stderr.strip().splitlines()[-1][:300]
        return {"tool": tool, "status": f"did not finish: {reason}", "wall_seconds": round(time.perf_counter() - started, 1)}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baskets", type=int, default=1_000_000)
    parser.add_argument("--skus", type=int, default=5_000)
    parser.add_argument("--min-support", type=float, default=0.0003)
    parser.add_argument("--max-length", type=int, default=5)
    parser.add_argument("--mean-extra", type=float, default=2.0, help="mean items per basket beyond the first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated, of {', '.join(TOOLS)}")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    parser.add_argument("--memory-gb", type=float, default=8, help="address-space cap per run")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--child", choices=TOOLS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--min-count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.data, args.min_count, args.max_length)
        return

    from ml_tasks.association import min_count_for

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crmw-bench-association-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    basket_ids, items = synthetic_baskets(args.baskets, args.skus, args.seed, args.mean_extra)
    data = workdir / "baskets.npz"
    np.savez(data, baskets=basket_ids, items=items, shape=np.array([args.baskets, args.skus]))
    min_count = min_count_for(args.min_support, args.baskets)
    print(json.dumps({"baskets": args.baskets, "skus": args.skus, "basket_items": int(len(items)),
                      "mean_basket_size": round(len(items) / args.baskets, 3), "min_support": args.min_support,
                      "min_count": min_count, "max_length": args.max_length,
                      "generate_seconds": round(time.perf_counter() - started, 1)}),
          flush=True)
    tools = [tool.strip() for tool in args.tools.split(",") if tool.strip()]
    runs: dict[str, list[dict]] = {tool: [] for tool in tools}
    for run in range(args.runs):
        for tool in tools:
            if run and runs[tool] and runs[tool][0]["status"] != "ok":
                continue  # a tool that did not finish (or is not installed) is not retried
            result = {"run": run, **run_once(tool, data, min_count, args.max_length, args.timeout, args.memory_gb)}
            runs[tool].append(result)
            print(json.dumps(result), flush=True)

    summary = {}
    for tool, results in runs.items():
        done = [r for r in results if r["status"] == "ok"]
        if not done:
            summary[tool] = {"status": results[0]["status"] if results else "not run"}
            continue
        summary[tool] = {
            "status": "ok", "runs": len(done),
            "median_seconds": statistics.median(r["seconds"] for r in done),
            "median_peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in done),
            "median_rss_before_mib": statistics.median(r["rss_before_mib"] for r in done),
            "itemsets_by_size": done[0]["itemsets_by_size"], "digest": done[0]["digest"],
        }
    ours = summary.get("ours", {})
    reference = summary.get("pyfim", {})
    for tool, row in summary.items():
        if row.get("status") != "ok":
            continue
        if ours.get("status") == "ok":
            row["same_itemsets_as_ours"] = row["digest"] == ours["digest"]
        if reference.get("status") == "ok":
            row["seconds_vs_pyfim"] = round(row["median_seconds"] / reference["median_seconds"], 2)
            row["peak_rss_vs_pyfim"] = round(row["median_peak_rss_mib"] / reference["median_peak_rss_mib"], 2)
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main()
