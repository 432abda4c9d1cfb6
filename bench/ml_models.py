"""Each registered model's task time and peak memory on a built warehouse: the DAG's own task code
(read features for the date, fit and score, check floors, publish), run --runs times per model,
each in a fresh process so its peak memory is its own.

    .venv/bin/python -m bench.ml_models --warehouse-url duckdb:///path/warehouse.duckdb --date 2025-01-31 --runs 3

The warehouse must hold the features dbt built for --date (for instance a `bench.dbt_build`
workdir's, or any `crmw run` warehouse). A run replaces the date's ml rows, as a rerun of the day
would. `--replicate K` (DuckDB) first copies the warehouse and makes every feature table the models
read K times larger for the date, each copy with its own customer and basket ids: a million
customers from a 100,000-customer build without simulating, loading and building a million (the
copies share their distributions, so itemsets and clusters stay those of the original). Prints JSON lines: every run (status, seconds, peak MB, rows in and out, the model's metrics
named in --metrics), then each model's medians.

A trained model (ml_tasks.contract: fitted now and then, scoring daily) is timed in two phases per
run: `refit` (its stored fits deleted first, so the run reads the training data, fits, validates
and scores: what a retraining day costs) and `score` (the fit just stored is loaded: every other day).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ml_tasks.registry import MODELS
from warehouse import connect, parse_warehouse_url


_CHILD = """
import datetime as dt, json, sys
from ml_tasks.tasks import run_model
run = run_model(sys.argv[1], dt.date.fromisoformat(sys.argv[2]), "bench", json.loads(sys.argv[3]), sys.argv[4])
print("RESULT " + json.dumps(run, default=str))
"""


def run_once(model: str, as_of_date: dt.date, params: dict, warehouse_url: str, max_rss_gb: float, max_seconds: float) -> dict:
    """One run in a child process, killed past the memory or time cap ("did not finish")."""
    import psutil

    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, model, as_of_date.isoformat(), json.dumps(params), warehouse_url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    started, peak, stopped = time.monotonic(), 0, None
    watched = psutil.Process(child.pid)
    while child.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        if peak > max_rss_gb * 2**30 or time.monotonic() - started > max_seconds:
            stopped = f"did not finish: over {max_rss_gb} GB" if peak > max_rss_gb * 2**30 else f"did not finish: over {max_seconds} s"
            child.kill()
            break
        time.sleep(0.2)
    stdout, stderr = child.communicate()
    if stopped:
        return {"model": model, "status": stopped, "seconds": round(time.monotonic() - started, 1), "peak_memory_mb": round(peak / 2**20, 1)}
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if child.returncode != 0 or not lines:
        return {"model": model, "status": "error", "error": stderr.strip().splitlines()[-1:] or ["?"]}
    return json.loads(lines[-1][len("RESULT "):])


# Columns holding a customer id: each copy gets its own customers (and its own referral network).
CUSTOMER_KEYS = ("customer_id", "referred_by_customer_id")
# Numbered keys (baskets, tickets): each copy's are shifted past the original's.
NUMBERED_KEYS = ("basket_id", "ticket_id")


def replicate(warehouse_url: str, as_of_date: dt.date, copies: int, workdir: Path, models: list[str]) -> str:
    """A copy of the DuckDB warehouse whose inputs of `models` hold `copies` times the date's rows."""
    source = parse_warehouse_url(warehouse_url).duckdb_path
    if source is None:
        raise SystemExit("--replicate needs a DuckDB warehouse")
    target = workdir / "replicated.duckdb"
    shutil.copyfile(source, target)
    url = f"duckdb:///{target}"
    specs = [spec for spec in MODELS if spec.name in models]
    tables = sorted({table.name for spec in specs for table in spec.reads})
    # Tables a model trains on besides what it reads to score (those it also reads: the date's rows).
    training = sorted({table.name for spec in specs for table in spec.trains_on if table not in spec.reads})
    with connect(url) as warehouse:
        for table in [*tables, *training]:
            columns = warehouse.table_columns(table)
            offsets = {
                column: warehouse.fetchall(f"select coalesce(max({column}), 0) + 1 from {table}")[0][0]
                for column in NUMBERED_KEYS if column in columns
            }
            select = ", ".join(
                f"{column} || case when copy = 0 then '' else '~' || copy end as {column}" if column in CUSTOMER_KEYS
                else f"{column} + copy * {offsets[column]} as {column}" if column in offsets
                else column
                for column in columns
            )
            # Inputs keep the date's rows; training tables every snapshot, marts (undated) every row.
            dated = table not in training and "as_of_date" in columns
            warehouse.execute(
                f"create or replace table {table} as select {select} from {table}, range(?) as copies(copy)"
                + (" where as_of_date = ?" if dated else ""),
                (copies, as_of_date) if dated else (copies,),
            )
            print(json.dumps({"replicated": table, "rows": warehouse.fetchall(f"select count(*) from {table}")[0][0]}), flush=True)
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse-url", required=True)
    parser.add_argument("--date", required=True, type=dt.date.fromisoformat, help="the as-of date dbt built the features for")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=[spec.name for spec in MODELS])
    parser.add_argument("--params", default="{}", help="DAG params as JSON, e.g. '{\"association_rules\": {\"min_support\": 0.001}}'")
    parser.add_argument("--metrics", nargs="*", default=[], help="metric names to print from each run")
    parser.add_argument("--replicate", type=int, default=1, help="make the models' inputs this many times larger (DuckDB)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--max-rss-gb", type=float, default=16.0, help="kill a run past this resident memory")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="kill a run past this time")
    args = parser.parse_args()
    params = json.loads(args.params)
    warehouse_url = args.warehouse_url
    if args.replicate > 1:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crmw-bench-ml-"))
        warehouse_url = replicate(warehouse_url, args.date, args.replicate, workdir, args.models)
    for model in args.models:
        trained = next(spec for spec in MODELS if spec.name == model).is_trained
        for phase in ("refit", "score") if trained else ("run",):
            bench_model(model, phase, args, params, warehouse_url)


def forget_fits(warehouse_url: str, model: str) -> None:
    with connect(warehouse_url) as warehouse:
        if warehouse.table_columns("ml.trained_models"):
            warehouse.execute("delete from ml.trained_models where model_name = ?", (model,))


def bench_model(model: str, phase: str, args: argparse.Namespace, params: dict, warehouse_url: str) -> None:
    """--runs runs of one model (in one phase), a JSON line each, then the medians."""
    runs = []
    for number in range(1, args.runs + 1):
        if phase == "refit":
            forget_fits(warehouse_url, model)
        run = run_once(model, args.date, params, warehouse_url, args.max_rss_gb, args.max_seconds)
        metrics = run.get("metrics") or {}
        line = {
            "model": model, "phase": phase, "run": number, "status": run.get("status"), "seconds": run.get("seconds"),
            "peak_memory_mb": run.get("peak_memory_mb"), "rows_in": run.get("rows_in"), "rows_out": run.get("rows_out"),
            **{name: metrics.get(name) for name in args.metrics if name in metrics},
        }
        if run.get("status") == "error":
            line["error"] = run["error"]
        print(json.dumps(line), flush=True)
        runs.append(run)
    timed = [run for run in runs if run.get("status") in ("published", "insufficient_data")]
    if timed:
        print(json.dumps({
            "model": model, "phase": phase, "median_seconds": statistics.median(run["seconds"] for run in timed),
            "median_peak_memory_mb": statistics.median(run["peak_memory_mb"] for run in timed), "runs": len(timed),
        }), flush=True)


if __name__ == "__main__":
    main()
