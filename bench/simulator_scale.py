"""How long `crmw simulate` takes and how much memory it peaks at, for a given size.

    .venv/bin/python -m bench.simulator_scale --customers 100000 --days 730 --runs 3

Each run is a separate process (peak RSS is that process's); prints one JSON line per run and a
summary line with the median. The issue's targets on the 2-core machine: 100,000 customers with
2 years of history under 2 minutes, 1,000,000 under 15 minutes, peak memory under 6 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(customers: int, days: int, seed: int, workdir: Path, keep: bool = False) -> dict:
    out = workdir / f"sources-{seed}"
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable, "-m", "crmw.cli", "simulate", "--customers", str(customers),
        "--start", "2024-01-01", "--days", str(days), "--seed", str(seed), "--out", str(out),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"simulate failed: {result.stderr[-2000:]}")
    size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return {
        "customers": customers,
        "days": days,
        "seed": seed,
        "seconds": round(seconds, 1),
        # CPU time (user + system) of the run: steadier than wall time when other work shares the machine.
        "cpu_seconds": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
        # ru_maxrss of children is the largest child so far: exact for the first run, an upper bound after.
        "peak_rss_mib": round(after.ru_maxrss / 1024),
        "output_mib": round(size / 2**20),
        "summary": result.stdout.strip().splitlines()[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the last run's output in the workdir")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crmw-bench-"))
    runs = []
    for seed in range(args.runs):
        runs.append(run_once(args.customers, args.days, seed, workdir, keep=args.keep and seed == args.runs - 1))
        print(json.dumps(runs[-1]), flush=True)
    print(json.dumps({
        "customers": args.customers,
        "days": args.days,
        "runs": len(runs),
        "median_seconds": statistics.median(run["seconds"] for run in runs),
        "median_cpu_seconds": statistics.median(run["cpu_seconds"] for run in runs),
        "max_peak_rss_mib": max(run["peak_rss_mib"] for run in runs),
    }), flush=True)


if __name__ == "__main__":
    main()
