"""Publish to BI (warehouse/publish.py) on a warehouse whose marts dbt has built: a first publish
(every mart copied when `published` is empty), then steady days, each marking a share of every incremental fact's rows as
written by a new dbt run (about a day's reprocessing window) and publishing; last, a publish with
nothing new in the facts.

    .venv/bin/python -m bench.publish --warehouse duckdb:///scratch/copy.duckdb --runs 3

It rewrites `_built_at` in the facts and replaces schema `published`: point it at a scratch copy.
Prints JSON lines: each publish (wall seconds, rows written, the facts' rows written), then the
median of the steady days, with the machine's load average.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time

from warehouse import connect
from warehouse.publish import BUILT_AT, marts_of, publish_marts


def _timed_publish(warehouse, label: str) -> dict:
    started = time.perf_counter()
    written = publish_marts(warehouse, dt.date.today(), f"bench-{label}")
    seconds = time.perf_counter() - started
    facts = {mart.name: written.get(mart.name, 0) for mart in marts_of() if mart.unique_key}
    return {"publish": label, "seconds": round(seconds, 2), "rows_written": sum(written.values()), "facts": facts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warehouse", required=True, help="URL of a scratch copy of a built warehouse")
    parser.add_argument("--runs", type=int, default=3, help="steady days to publish (default 3)")
    parser.add_argument("--rewritten-share", type=float, default=0.003,
                        help="share of each fact's rows a steady day rewrites (default 0.003)")
    args = parser.parse_args()
    facts = [mart for mart in marts_of() if mart.unique_key]
    steady = []
    with connect(args.warehouse) as warehouse:
        print(json.dumps(_timed_publish(warehouse, "first")), flush=True)
        for run in range(args.runs):
            below = format(int(0xFFFFFF * args.rewritten_share), "06x")
            for mart in facts:
                # A different sample of keys each run (md5 prefixes: the same SQL on both engines).
                keys = " || '/' || ".join(f"cast({key} as varchar)" for key in mart.unique_key)
                warehouse.execute(
                    f"update marts.{mart.name} set {BUILT_AT} = current_timestamp"
                    f" where substr(md5({keys} || '/{run}'), 1, 6) < '{below}'"
                )
            steady.append(_timed_publish(warehouse, f"steady-{run + 1}"))
            print(json.dumps(steady[-1]), flush=True)
        print(json.dumps(_timed_publish(warehouse, "nothing-new")), flush=True)
    print(json.dumps({
        "median_steady_seconds": statistics.median(run["seconds"] for run in steady),
        "load_average": os.getloadavg(),
    }), flush=True)


if __name__ == "__main__":
    main()
