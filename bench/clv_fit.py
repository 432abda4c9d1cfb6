"""The BG/NBD maximum-likelihood fit at scale: ours (ml_tasks.lifetime_value.fit_bgnbd: analytic
gradient, identical customers fitted once with a weight) against the same likelihood without
grouping and/or with scipy's finite-difference gradient, on customers drawn from a BG/NBD process.

    .venv/bin/python -m bench.clv_fit --customers 1000000 --runs 3

- The customers (seeded): a first purchase uniform over the last --max-age-days days; while alive
  a Poisson rate lambda ~ Gamma(r, alpha) per week, after each repeat purchase a dropout with
  probability p ~ Beta(a, b) (defaults: CDNOW's published parameters). Day counts are whole days,
  as features.customer_purchase_summary holds them.
- Variants: `ours`; `rows` (analytic gradient, every customer a row of weight 1); `numeric`
  (grouped, gradient by scipy's 2-point finite differences: L-BFGS-B with jac=None, 5 likelihood
  evaluations per gradient); `numeric_rows` (neither); `textbook` (FHL's eq. 6 written per row,
  every gamma function on every row, finite differences: what a plain scipy fit does).
- Each run is its own process: it loads the customers, samples its resident memory every 10 ms
  on a thread, fits (timed: wall and CPU seconds) and reports the peak resident memory above the
  memory it had before the fit. Prints JSON lines: each run, then per variant the medians and
  their ratios to ours, with the machine's load average (the machine may be shared: CPU seconds
  move less with the load than wall seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

VARIANTS = ("ours", "rows", "numeric", "numeric_rows", "textbook")
# CDNOW (Fader, Hardie & Lee 2005): r, alpha (weeks), a, b.
CDNOW = (0.243, 4.414, 0.793, 2.426)


def simulate_bgnbd(customers: int, r: float, alpha: float, a: float, b: float, max_age_days: int,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(repeat purchases x, span t_x, age T) in whole days of `customers` drawn from a BG/NBD process.
    Given N purchases in (0, T] (Poisson, lambda T), the customer is alive for the first J of them
    (J ~ Geometric(p) counts the purchases up to the dropout), so x = min(N, J); the x-th of N
    uniform purchase times is T x Beta(x, N - x + 1)."""
    rng = np.random.default_rng(seed)
    age = rng.integers(0, max_age_days + 1, customers)
    rate_per_day = rng.gamma(r, 1 / alpha, customers) / 7.0
    dropout = rng.beta(a, b, customers)
    purchases = rng.poisson(rate_per_day * age)
    repeat = np.minimum(purchases, rng.geometric(dropout))
    span = np.zeros(customers, dtype=np.int64)
    bought = repeat > 0
    span[bought] = np.floor(age[bought] * rng.beta(repeat[bought], purchases[bought] - repeat[bought] + 1)).astype(np.int64)
    return repeat.astype(np.int64), span, age.astype(np.int64)


def _textbook_value(log_parameters: np.ndarray, x: np.ndarray, span: np.ndarray, age: np.ndarray) -> float:
    """Minus the mean BG/NBD log-likelihood, FHL 2005 eq. 6 term by term on every row (weeks)."""
    from scipy.special import betaln, gammaln

    r, alpha, a, b = np.exp(log_parameters)
    common = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    alive = betaln(a, b + x) - betaln(a, b) - (r + x) * np.log(alpha + age)
    dead = np.where(x > 0, betaln(a + 1, np.maximum(b + x - 1, 1e-12)) - betaln(a, b) - (r + x) * np.log(alpha + span), -np.inf)
    return -float(np.mean(common + np.logaddexp(alive, dead)))


def _fit(variant: str, x: np.ndarray, span: np.ndarray, age: np.ndarray) -> dict:
    from scipy.optimize import minimize

    from ml_tasks.lifetime_value import (
        DAYS_PER_WEEK, LOG_PARAMETER_BOUNDS, OPTIMISER_OPTIONS, BgNbdLikelihood, distinct_rows, fit_bgnbd,
    )

    if variant == "ours":
        fitted = fit_bgnbd(x, span, age)
        parameters = fitted.parameters
        return {"r": parameters.r, "alpha": parameters.alpha, "a": parameters.a, "b": parameters.b,
                "log_likelihood": fitted.log_likelihood, "iterations": fitted.iterations,
                "evaluations": fitted.evaluations, "distinct_rows": fitted.distinct_rows}
    if variant == "textbook":
        weeks = (x.astype("float64"), span / DAYS_PER_WEEK, age / DAYS_PER_WEEK)
        result = minimize(_textbook_value, np.zeros(4), args=weeks, method="L-BFGS-B",
                          bounds=[LOG_PARAMETER_BOUNDS] * 4, options=OPTIMISER_OPTIONS)
        r, alpha, a, b = np.exp(result.x)
        return {"r": r, "alpha": alpha, "a": a, "b": b, "log_likelihood": -result.fun * len(x),
                "iterations": int(result.nit), "evaluations": int(result.nfev), "distinct_rows": len(x)}
    if variant == "numeric":
        rows = distinct_rows(x, span, age)
        columns, weights = rows.columns, rows.counts
    else:
        columns, weights = (x, span, age), np.ones(len(x))
    likelihood = BgNbdLikelihood(columns[0], columns[1] / DAYS_PER_WEEK, columns[2] / DAYS_PER_WEEK, weights)
    if variant == "rows":
        result = minimize(likelihood.value_and_gradient, np.zeros(4), jac=True, method="L-BFGS-B",
                          bounds=[LOG_PARAMETER_BOUNDS] * 4, options=OPTIMISER_OPTIONS)
    else:
        result = minimize(likelihood.value, np.zeros(4), method="L-BFGS-B",
                          bounds=[LOG_PARAMETER_BOUNDS] * 4, options=OPTIMISER_OPTIONS)
    r, alpha, a, b = np.exp(result.x)
    return {"r": r, "alpha": alpha, "a": a, "b": b, "log_likelihood": -result.fun * likelihood.total_weight,
            "iterations": int(result.nit), "evaluations": int(result.nfev), "distinct_rows": len(weights)}


def _child(variant: str, data: Path) -> None:
    """One run of one variant; prints its JSON line."""
    import psutil

    import scipy.optimize  # noqa: F401  (imported before timing and the baseline: a task imports it once)
    import scipy.special  # noqa: F401

    import ml_tasks.lifetime_value  # noqa: F401

    loaded = np.load(data)
    x, span, age = loaded["x"], loaded["span"], loaded["age"]
    process = psutil.Process(os.getpid())
    baseline = process.memory_info().rss
    highest = [baseline]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            highest[0] = max(highest[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started, cpu_started = time.perf_counter(), time.process_time()
    result = _fit(variant, x, span, age)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    stop.set()
    sampler.join()
    highest[0] = max(highest[0], process.memory_info().rss)
    print(json.dumps({
        "variant": variant, "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3),
        "peak_rss_above_baseline_mib": round((highest[0] - baseline) / 2**20, 1),
        **{key: round(float(value), 6) if isinstance(value, float) else value for key, value in result.items()},
    }))


def run_once(variant: str, data: Path, timeout: float) -> dict:
    command = [sys.executable, "-m", "bench.clv_fit", "--child", variant, "--data", str(data)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).resolve().parents[1])
    except subprocess.TimeoutExpired:
        return {"variant": variant, "status": f"did not finish: over {timeout:g} s"}
    if result.returncode != 0:
        return {"variant": variant, "status": f"error: {(result.stderr.strip().splitlines() or ['?'])[-1][:300]}"}
    return {"status": "ok", **json.loads(result.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--max-age-days", type=int, default=730)
    parser.add_argument("--parameters", default=",".join(map(str, CDNOW)), help="r,alpha,a,b (alpha in weeks)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.data)
        return

    r, alpha, a, b = (float(value) for value in args.parameters.split(","))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crmw-bench-clv-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    x, span, age = simulate_bgnbd(args.customers, r, alpha, a, b, args.max_age_days, args.seed)
    data = workdir / "customers.npz"
    np.savez(data, x=x, span=span, age=age)
    print(json.dumps({"customers": args.customers, "true_parameters": {"r": r, "alpha": alpha, "a": a, "b": b},
                      "repeat_buyers": int((x > 0).sum()), "max_age_days": args.max_age_days,
                      "generate_seconds": round(time.perf_counter() - started, 1), "load_average": os.getloadavg()}), flush=True)
    variants = [variant.strip() for variant in args.variants.split(",") if variant.strip()]
    runs: dict[str, list[dict]] = {variant: [] for variant in variants}
    for run in range(args.runs):
        for variant in variants:
            result = {"run": run, **run_once(variant, data, args.timeout), "load_average": round(os.getloadavg()[0], 2)}
            runs[variant].append(result)
            print(json.dumps(result), flush=True)

    summary: dict[str, dict] = {}
    for variant, results in runs.items():
        done = [result for result in results if result["status"] == "ok"]
        if not done:
            summary[variant] = {"status": results[0]["status"] if results else "not run"}
            continue
        summary[variant] = {
            "status": "ok", "runs": len(done),
            **{f"median_{key}": statistics.median(result[key] for result in done)
               for key in ("seconds", "cpu_seconds", "peak_rss_above_baseline_mib", "evaluations")},
            "parameters": {key: done[0][key] for key in ("r", "alpha", "a", "b")},
        }
    ours = summary.get("ours", {})
    for variant, row in summary.items():
        if row.get("status") == "ok" and ours.get("status") == "ok":
            row["seconds_vs_ours"] = round(row["median_seconds"] / ours["median_seconds"], 2)
            row["cpu_seconds_vs_ours"] = round(row["median_cpu_seconds"] / ours["median_cpu_seconds"], 2)
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main()
