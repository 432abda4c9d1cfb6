"""`crmw bench`: the end-to-end harness runs every stage on the tiny tier and records its fields.
No time is asserted: the figures belong to the machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crmw import bench, cli
from crmw.bench import FIELDS, FULL_RUN, LARGEST_TABLES, SLOWEST_NODES, STEADY_DAY, STORAGE_BUDGET_MB, _cell, run_benchmark
from ml_tasks.registry import MODELS

PIPELINE_STAGES = ["extract-load", "reconcile", "dbt build", *(f"ml: {spec.name}" for spec in MODELS), "publish"]


def test_bench_tiny_tier_times_every_stage_then_a_steady_day(tmp_path: Path) -> None:
    lines: list[str] = []
    path = run_benchmark("tiny", "duckdb", runs=1, results_dir=tmp_path, emit=lines.append)

    result = json.loads(path.read_text())
    expected = ["simulate", *PIPELINE_STAGES, FULL_RUN,
                "steady day: simulate", *(f"steady day: {stage}" for stage in PIPELINE_STAGES), STEADY_DAY]
    assert [row["stage"] for row in result["stages"]] == expected
    assert (result["tier"], result["engine"], result["runs"], result["customers"]) == ("tiny", "duckdb", 1, 200)
    assert result["duckdb_settings"]["memory_limit"]  # what DuckDB could hold, beside the peaks it reached
    for row in result["stages"]:
        assert set(FIELDS) <= set(row), row
        assert row["wall_seconds"] > 0 and row["cpu_seconds"] >= 0 and row["peak_rss_mb"] > 0, row
    by_stage = {row["stage"]: row for row in result["stages"]}
    for stage in ("simulate", "extract-load", "dbt build", "publish", "steady day: extract-load", "steady day: dbt build"):
        assert by_stage[stage]["rows"] > 0 and by_stage[stage]["rows_per_second"] > 0, stage
    assert {status for spec in MODELS for status in by_stage[f"ml: {spec.name}"]["status"]} <= {"published", "insufficient_data", "below_floor"}
    # A model that refitted says why (the first run's: no stored fit).
    assert all(row["refit_reasons"] for row in result["stages"] if row.get("refitted"))

    # Each stage is a JSON line as it completes; the table is printed last and written beside the JSON.
    streamed = [json.loads(line) for line in lines[:-1]]
    assert [record["stage"] for record in streamed] == expected
    table = path.with_suffix(".md").read_text()
    assert lines[-1] == table
    # The header row and one row per stage, then the storage table: a header and a row per schema.
    storage = result["storage_mb"]
    assert list(storage) == ["full run", "steady day"]
    assert {"raw_sales", "marts", "features", "ml", "total"} <= set(storage["steady day"])
    assert storage["steady day"]["total"] >= storage["steady day"]["marts"] > 0
    # Beside each schema its budget (6 GB at 100,000 customers × 730 days, scaled to the tier) and
    # the megabytes over it; every schema the warehouse holds has one.
    budget = result["storage_budget_mb"]
    assert set(storage["steady day"]) <= set(budget)
    assert budget["total"] == round(sum(STORAGE_BUDGET_MB.values()) * 200 * 60 / (100_000 * 730), 1)
    assert "| schema | MB after the full run | MB after the steady day | budget MB | over budget MB |" in table
    over = round(storage["steady day"]["total"] - budget["total"], 1)
    assert f"| total | {_cell(storage['full run']['total'])} | {_cell(storage['steady day']['total'])} | {_cell(budget['total'])} | {_cell(over)} |" in table
    # Then the largest tables, biggest first, and each build's slowest dbt nodes by dbt's timing.
    largest = result["largest_tables_mb"]
    assert list(largest) == ["full run", "steady day"]
    sizes = list(largest["steady day"].values())
    assert len(sizes) == LARGEST_TABLES and sizes == sorted(sizes, reverse=True) and sizes[0] > 0
    tables = dict.fromkeys(name for moment in largest.values() for name in moment)
    assert table.count("\n| ") == len(expected) + 1 + 1 + len(storage["steady day"]) + 1 + len(tables)
    for stage in ("dbt build", "steady day: dbt build"):
        slowest = by_stage[stage]["slowest_nodes"]
        assert len(slowest) == SLOWEST_NODES and list(slowest.values()) == sorted(slowest.values(), reverse=True)
        assert f"Slowest dbt nodes of {stage} (first run): " in table
    # Models by their bare names, other nodes by kind and name; a full build's slowest hold a model.
    names = list(by_stage["dbt build"]["slowest_nodes"])
    assert all(" " not in name or name.split(" ")[0] in {"test", "seed", "snapshot"} for name in names), names
    assert any(" " not in name for name in names), names


def test_bench_rejects_fewer_than_one_run(capsys) -> None:
    assert cli.main(["bench", "--tier", "tiny", "--runs", "0"]) == 2
    assert capsys.readouterr().err == "crmw: error: --runs 0: expected 1 or more runs\n"


def test_bench_on_spark_says_what_is_missing_before_simulating(monkeypatch, capsys) -> None:
    # Checked before the tier is simulated: a machine without Java learns it at once, not minutes in.
    monkeypatch.setattr("warehouse.spark.spark_missing", lambda: "Spark needs Java 17")
    monkeypatch.setattr(bench, "_one_run", lambda *args: pytest.fail("the tier ran before Spark was checked"))
    assert cli.main(["bench", "--tier", "tiny", "--engine", "spark"]) == 2
    assert capsys.readouterr().err == "crmw: error: --engine spark: a local Spark cannot start here: Spark needs Java 17\n"
