"""The writing-back contract every model follows, on both engines: declared schemas, replace by
date, ml.model_runs, insufficient data, quality floors, failures, `_latest` views and BI grants,
as-of reads. A small contract-following model (tests/toy_model.py) stands in for a real one."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re

import pandas as pd
import pyarrow as pa
import pytest

from ml_tasks import registry, tasks, warehouse_io
from ml_tasks.contract import BadParameter, HistoryPolicy, QualityBelowFloor, build_settings
from tests import toy_model
from tests.toy_model import SPEC
from warehouse import connect

DAY = dt.date(2025, 6, 30)
NEXT_DAY = DAY + dt.timedelta(days=1)


def _load_features(url: str, as_of: dt.date, spends: dict[str, float], last_order: dt.date | None = None) -> None:
    frame = pd.DataFrame(
        {
            "customer_id": list(spends),
            "as_of_date": [as_of] * len(spends),
            "spend": list(spends.values()),
            "last_order_date": [last_order or as_of] * len(spends),
        }
    )
    with connect(url) as warehouse:
        warehouse.ensure_table(
            "features.toy_features", {"customer_id": "string", "as_of_date": "date", "spend": "double", "last_order_date": "date"}
        )
        warehouse.execute("delete from features.toy_features where as_of_date = ?", (as_of,))
        warehouse.append_arrow("features.toy_features", pa.Table.from_pandas(frame, preserve_index=False))


SPENDS = {"ann": 10.0, "ben": 30.0, "cat": 50.0, "dan": 70.0}


def _rows(url: str, sql: str, params=()) -> list[tuple]:
    with connect(url) as warehouse:
        return warehouse.fetchall(sql, params)


def _runs(url: str) -> list[dict]:
    with connect(url) as warehouse:
        frame = warehouse.fetch_df("select * from ml.model_runs order by finished_at")
    return frame.to_dict("records")


def test_results_are_written_in_their_declared_types_with_stamps(warehouse_url):
    _load_features(warehouse_url, DAY, SPENDS)
    run = tasks.run_model(SPEC, DAY, "run-1", warehouse_url=warehouse_url)
    assert run["status"] == "published" and run["rows_in"] == 4 and run["rows_out"] == 5
    types = dict(_rows(
        warehouse_url,
        "select column_name, lower(data_type) from information_schema.columns"
        " where table_schema = 'ml' and table_name = 'toy_scores'",
    ))
    assert types["scored_at"].startswith("timestamp")  # a timestamp stays a timestamp
    assert types["last_order_date"] == "date"
    assert types["above_mean"] == "boolean"
    assert types["as_of_date"] == "date"
    assert types["spend"] in ("double", "double precision")
    rows = _rows(warehouse_url, "select customer_id, above_mean, scored_at, run_id, model_version, as_of_date from ml.toy_scores order by 1")
    assert rows[0] == ("ann", False, dt.datetime(2025, 6, 30, 6, 30, 15), "run-1", "toy-1", DAY)
    assert [row[1] for row in rows] == [False, False, True, True]
    if warehouse_url.startswith("postgresql"):  # a date is replaced, and `_latest` read, through an index
        indexed = _rows(warehouse_url, "select tablename, indexdef from pg_indexes where schemaname = 'ml' order by 1")
        assert [(table, definition.endswith("(as_of_date)")) for table, definition in indexed] == [
            ("model_runs", True), ("toy_scores", True), ("toy_summary", True)]


def test_a_rerun_replaces_the_date_keeps_earlier_dates_and_appends_a_model_run(warehouse_url):
    _load_features(warehouse_url, DAY, SPENDS)
    tasks.run_model(SPEC, DAY, "day-1", warehouse_url=warehouse_url)
    _load_features(warehouse_url, NEXT_DAY, {**SPENDS, "eve": 90.0})
    tasks.run_model(SPEC, NEXT_DAY, "day-2", warehouse_url=warehouse_url)
    second = tasks.run_model(SPEC, NEXT_DAY, "day-2-rerun", warehouse_url=warehouse_url)
    per_date = _rows(warehouse_url, "select as_of_date, run_id, count(*) from ml.toy_scores group by 1, 2 order by 1")
    assert per_date == [(DAY, "day-1", 4), (NEXT_DAY, "day-2-rerun", 5)]
    runs = _runs(warehouse_url)
    assert [(r["run_id"], r["status"]) for r in runs] == [("day-1", "published"), ("day-2", "published"), ("day-2-rerun", "published")]
    # The model read its own previous date's summary back.
    assert second["metrics"]["previous_customers"] == 4
    assert json.loads(runs[-1]["metrics"]) == {"heldout_quality": 0.9, "previous_customers": 4}
    assert json.loads(runs[-1]["parameters"]) == {"fail": False, "reported_quality": 0.9, "window_days": 30}
    assert runs[-1]["rows_in"] == 5 and runs[-1]["rows_out"] == 6
    assert runs[-1]["seconds"] > 0 and runs[-1]["peak_memory_mb"] > 10
    assert set(json.loads(runs[-1]["phase_seconds"])) == {"read", "score"}  # the toy model is not trained
    assert runs[1]["training_fingerprint"] == runs[2]["training_fingerprint"] != runs[0]["training_fingerprint"]


def test_per_customer_outputs_keep_recent_dates_and_month_ends_the_rest_every_date(warehouse_url, monkeypatch):
    monkeypatch.setenv("CRMW_ML_DAILY_HISTORY_DAYS", "2")
    monkeypatch.setenv("CRMW_ML_MONTHLY_HISTORY_MONTHS", "2")
    runs = [(dt.date(2025, 4, 29), SPENDS), (dt.date(2025, 4, 30), SPENDS), (dt.date(2025, 5, 30), SPENDS),
            (dt.date(2025, 5, 31), SPENDS),
            # May 31 run again with too little data: it holds no scores now, May 30's are the month's last.
            (dt.date(2025, 5, 31), {"ann": 10.0}),
            (dt.date(2025, 6, 27), SPENDS), (dt.date(2025, 6, 28), SPENDS), (dt.date(2025, 6, 29), SPENDS),
            (DAY, SPENDS), (NEXT_DAY, SPENDS)]
    for number, (day, spends) in enumerate(runs):
        _load_features(warehouse_url, day, spends)
        tasks.run_model(SPEC, day, f"run-{number}", warehouse_url=warehouse_url)
    kept = [row[0] for row in _rows(warehouse_url, "select distinct as_of_date from ml.toy_scores order by 1")]
    # On July 1: June 29 and 30 are within two days (June's last date among them), May 30 is May's
    # last date held, two months back; April is three.
    assert kept == [dt.date(2025, 5, 30), dt.date(2025, 6, 29), DAY, NEXT_DAY]
    # A table of a row per date keeps every date, and a backfill of an earlier day drops nothing after it.
    assert len(_rows(warehouse_url, "select distinct as_of_date from ml.toy_summary")) == len({day for day, _ in runs}) - 1
    tasks.run_model(SPEC, dt.date(2025, 6, 28), "backfill", warehouse_url=warehouse_url)
    assert [row[0] for row in _rows(warehouse_url, "select distinct as_of_date from ml.toy_scores order by 1")] == [
        dt.date(2025, 5, 30), dt.date(2025, 6, 28), dt.date(2025, 6, 29), DAY, NEXT_DAY]


@pytest.mark.parametrize(("environ", "message"), [
    ({"CRMW_ML_DAILY_HISTORY_DAYS": "a week"}, "CRMW_ML_DAILY_HISTORY_DAYS='a week': expected a whole number"),
    ({"CRMW_ML_DAILY_HISTORY_DAYS": "0"}, "CRMW_ML_DAILY_HISTORY_DAYS: got 0, expected at least 1"),
    ({"CRMW_ML_MONTHLY_HISTORY_MONTHS": "-1"}, "CRMW_ML_MONTHLY_HISTORY_MONTHS: got -1, expected at least 0"),
])
def test_a_bad_history_policy_is_refused_naming_its_variable(environ, message):
    with pytest.raises(BadParameter, match=re.escape(message)):
        HistoryPolicy.from_environ(environ)


def test_the_default_history_policy_keeps_a_week_daily_and_thirteen_month_ends():
    held = [dt.date(2025, 1, 1) + dt.timedelta(days=offset) for offset in range(0, 700, 3)]
    as_of = held[-1]
    kept = sorted(set(held) - set(HistoryPolicy.from_environ({}).dates_to_drop(held, as_of)))
    daily = [day for day in kept if (as_of - day).days <= 7]
    assert daily == [day for day in held if (as_of - day).days <= 7] and len(daily) == 3
    # Before those, each month's last date back to 13 months before December 2026 (November's is daily).
    month_ends = [day for day in kept if day not in daily]
    assert as_of == dt.date(2026, 12, 1) and daily[0] == dt.date(2026, 11, 25)
    assert [(day.year, day.month) for day in month_ends] == [(2025, 11), (2025, 12), *((2026, month) for month in range(1, 11))]
    assert all((day + dt.timedelta(days=3)).month != day.month for day in month_ends)


def test_too_little_data_publishes_empty_tables_and_skips_the_floors(warehouse_url):
    _load_features(warehouse_url, DAY, {"ann": 10.0, "ben": 20.0})  # the spec needs 3 rows
    run = tasks.run_model(SPEC, DAY, "new-install", {"toy": {"reported_quality": 0.1}}, warehouse_url=warehouse_url)
    assert run["status"] == "insufficient_data"
    assert "fewer than the 3 toy needs" in run["message"]
    assert _rows(warehouse_url, "select count(*) from ml.toy_scores") == [(0,)]
    columns = [row[0] for row in _rows(
        warehouse_url,
        "select column_name from information_schema.columns where table_schema = 'ml' and table_name = 'toy_scores' order by ordinal_position",
    )]
    assert columns == [*toy_model.SCORES.columns, "as_of_date", "run_id", "model_version"]
    # The model may also say so itself.
    _load_features(warehouse_url, NEXT_DAY, {"ann": 0.0, "ben": 0.0, "cat": 0.0})
    assert tasks.run_model(SPEC, NEXT_DAY, "no-spend", warehouse_url=warehouse_url)["message"] == "no spend to score"
    assert [r["status"] for r in _runs(warehouse_url)] == ["insufficient_data", "insufficient_data"]


def test_a_metric_below_its_floor_fails_publishes_nothing_and_keeps_the_previous_results(warehouse_url):
    _load_features(warehouse_url, DAY, SPENDS)
    tasks.run_model(SPEC, DAY, "good", warehouse_url=warehouse_url)
    _load_features(warehouse_url, DAY, {**SPENDS, "eve": 90.0})
    with pytest.raises(QualityBelowFloor, match=r"^toy toy-1: heldout_quality = 0\.2 on held-out data, below its floor 0\.5"):
        tasks.run_model(SPEC, DAY, "bad", {"toy": {"reported_quality": 0.2}}, warehouse_url=warehouse_url)
    assert _rows(warehouse_url, "select distinct run_id from ml.toy_scores") == [("good",)]
    assert _rows(warehouse_url, "select count(*) from ml.toy_scores") == [(4,)]
    runs = _runs(warehouse_url)
    assert [(r["run_id"], r["status"]) for r in runs] == [("good", "published"), ("bad", "below_floor")]
    assert "heldout_quality" in runs[1]["message"] and runs[1]["rows_out"] == 0


def test_a_failing_model_is_recorded_as_failed_and_publishes_nothing(warehouse_url):
    _load_features(warehouse_url, DAY, SPENDS)
    with pytest.raises(RuntimeError, match="told to fail"):
        tasks.run_model(SPEC, DAY, "broken", {"toy": {"fail": True}}, warehouse_url=warehouse_url)
    (run,) = _runs(warehouse_url)
    assert run["status"] == "failed" and "told to fail" in run["message"]
    with connect(warehouse_url) as warehouse:
        assert warehouse.table_columns("ml.toy_scores") == []


def test_reads_take_the_as_of_date_and_the_window_and_name_a_missing_date(warehouse_url):
    _load_features(warehouse_url, DAY, SPENDS, last_order=DAY - dt.timedelta(days=40))
    _load_features(warehouse_url, NEXT_DAY, {"zed": 5.0})
    with connect(warehouse_url) as warehouse:
        table = SPEC.reads[0]
        assert list(warehouse_io.read_input(warehouse, table, DAY)["customer_id"].sort_values()) == sorted(SPENDS)
        assert warehouse_io.read_input(warehouse, table, DAY, window_days=30).empty  # orders 40 days back
        assert len(warehouse_io.read_input(warehouse, table, DAY, window_days=41)) == 4
        with pytest.raises(warehouse_io.MissingFeatureDate, match=(
            r"^features.toy_features holds features as of 2 dates from 2025-06-30 to 2025-07-01, not 2025-07-02:"
            r" run the dbt step for 2025-07-02 first$"
        )):
            warehouse_io.read_input(warehouse, table, NEXT_DAY + dt.timedelta(days=1))
        warehouse.execute("delete from features.toy_features")
        assert warehouse_io.read_input(warehouse, table, DAY).empty  # a new install: no error


def test_a_mart_is_read_by_its_window_up_to_the_date_and_another_models_rows_by_their_filter(warehouse_url):
    from ml_tasks.contract import InputTable

    days = [DAY - dt.timedelta(days=offset) for offset in range(-2, 10)]  # two days after the date too
    with connect(warehouse_url) as warehouse:
        warehouse.ensure_table("marts.toy_daily", {"sales_date": "date", "revenue": "double"})
        warehouse.append_arrow("marts.toy_daily", pa.table({"sales_date": days, "revenue": [1.0] * len(days)}))
        mart = InputTable("marts.toy_daily", window_column="sales_date", window_setting="window_days", dated=False)
        window = warehouse_io.read_input(warehouse, mart, DAY, window_days=7)
        assert sorted(pd.to_datetime(window["sales_date"]).dt.date) == sorted(days[2:9])
        warehouse.ensure_table("ml.toy_upstream", {"customer_id": "string", "as_of_date": "date", "rank": "integer"})
        warehouse.append_arrow("ml.toy_upstream", pa.table({"customer_id": ["a", "a"], "as_of_date": [NEXT_DAY] * 2, "rank": [1, 2]}))
        assert warehouse_io.read_input(warehouse, InputTable("ml.toy_upstream", may_lack_date=True), DAY).empty
        first = InputTable("ml.toy_upstream", may_lack_date=True, row_filter='"rank" = 1')
        assert warehouse_io.read_input(warehouse, first, NEXT_DAY)["rank"].tolist() == [1]
    with pytest.raises(ValueError, match="marts.toy_daily: an undated table needs a window_column"):
        InputTable("marts.toy_daily", dated=False)


def test_a_training_signature_aggregates_the_stored_table_it_is_given(warehouse_url):
    """training_set is a view over training_labels: the daily refit check sums the labels alone."""
    from ml_tasks.contract import InputTable

    with connect(warehouse_url) as warehouse:
        warehouse.ensure_table("features.toy_labels", {"customer_id": "string", "as_of_date": "date", "is_churned": "boolean"})
        warehouse.append_arrow("features.toy_labels", pa.table({
            "customer_id": ["a", "b", "c"], "as_of_date": [DAY, DAY, NEXT_DAY], "is_churned": [True, False, True]}))
        warehouse.execute("create view features.toy_training as select * from features.toy_labels where customer_id <> 'c'")
        signature = ("count(*)", "sum(case when is_churned then 1 else 0 end)")
        labels = InputTable("features.toy_training", signature_from="features.toy_labels")
        assert warehouse_io.training_signature(warehouse, [labels], signature, NEXT_DAY, {}) == {
            "features.toy_training": [[DAY.isoformat(), 2.0, 1.0], [NEXT_DAY.isoformat(), 1.0, 1.0]]}
        assert warehouse_io.training_signature(warehouse, [InputTable("features.toy_training")], signature, NEXT_DAY, {}) == {
            "features.toy_training": [[DAY.isoformat(), 2.0, 1.0]]}


def test_latest_views_show_each_tables_newest_date(warehouse_url):
    _load_features(warehouse_url, DAY, SPENDS)
    tasks.run_model(SPEC, DAY, "day-1", warehouse_url=warehouse_url)
    _load_features(warehouse_url, NEXT_DAY, {"ann": 1.0, "ben": 2.0, "cat": 3.0})
    tasks.run_model(SPEC, NEXT_DAY, "day-2", warehouse_url=warehouse_url)
    with connect(warehouse_url) as warehouse:
        warehouse_io.ensure_outputs(warehouse, warehouse_io.latest_tables(SPEC.writes))
        warehouse_io.publish_latest_views(warehouse, SPEC.writes)
    assert _rows(warehouse_url, "select count(*), min(as_of_date) from ml.toy_scores_latest") == [(3, NEXT_DAY)]
    assert _rows(warehouse_url, "select customers from ml.toy_summary_latest") == [(3,)]
    assert _rows(warehouse_url, "select count(*) from ml.model_runs_latest") == [(1,)]


def test_undeclared_or_missing_result_columns_are_refused_by_name():
    frame = pd.DataFrame({"customers": [1], "mean_spend": [2.0], "extra": [3]})
    with pytest.raises(ValueError, match="ml.toy_summary: results have a undeclared column 'extra'"):
        warehouse_io.to_arrow(toy_model.SUMMARY, frame, {"as_of_date": DAY, "run_id": "r", "model_version": "v"})
    with pytest.raises(ValueError, match="missing column 'mean_spend'"):
        warehouse_io.to_arrow(toy_model.SUMMARY, frame[["customers"]], {"as_of_date": DAY, "run_id": "r", "model_version": "v"})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"toy": {"reported_quality": 1.5}}, "param toy__reported_quality: got 1.5, expected between 0 and 1"),
        ({"toy": {"window_days": 0}}, "param toy__window_days: got 0, expected at least 1"),
        ({"toy": {"window_days": "ten"}}, "param toy__window_days: got 'ten', expected int"),
        ({"toy": {"windows": 3}}, "param toy__windows: unknown; expected one of toy__fail, toy__reported_quality, toy__window_days"),
        ({"toy": 7}, "param toy: got 7, expected an object of its settings by name"),
        # The shape of params before they were grouped per model.
        ({"toy__window_days": 7}, 'param toy__window_days: a model\'s settings go in its own param, e.g. {"toy": {"window_days": 7}}'),
    ],
)
def test_a_bad_param_raises_one_line_naming_it(params, message):
    with pytest.raises(BadParameter) as error:
        build_settings(SPEC, params, environ={})
    assert str(error.value) == message


def test_settings_come_from_params_then_environment_then_defaults():
    assert build_settings(SPEC, {}, environ={}).window_days == 30
    assert build_settings(SPEC, {}, environ={"CRMW_TOY__WINDOW_DAYS": "12"}).window_days == 12
    assert build_settings(SPEC, {"toy": {"window_days": 7}}, environ={"CRMW_TOY__WINDOW_DAYS": "12"}).window_days == 7


# -- the registry ------------------------------------------------------------------------------------

def test_registered_models_write_distinct_ml_tables_with_default_settings_that_validate():
    assert registry.MODELS, "no model registered"
    tables = registry.output_tables()
    assert len({table.name for table in tables}) == len(tables)
    for spec in registry.MODELS:
        build_settings(spec, {}, environ={})
        assert all(table.name.split(".")[0] in ("ml", "activation") for table in spec.writes), spec.name
        assert all(not set(table.columns) & {"as_of_date", "run_id", "model_version"} for table in spec.writes)
        assert set(spec.reads_previous) <= {table.name for table in spec.writes}
        upstream_outputs = {table.name for name in spec.after for table in registry.model(name).writes}
        for table in [*spec.reads, *spec.trains_on]:
            schema = table.name.split(".")[0]
            # Features and the activation inputs dbt builds per date, or a feature table kept as
            # its latest state (basket_items) and, like the marts, cut by a window; the same date's
            # outputs of the models it runs after.
            assert (schema in ("features", "activation") and (table.dated or table.window_column)
                    or schema == "marts" and not table.dated
                    or table.name in upstream_outputs and table.may_lack_date), f"{spec.name} reads {table.name}"
        module = __import__(spec.module, fromlist=["run"])
        entry_points = ("fit", "score") if spec.is_trained else ("run",)
        assert all(callable(getattr(module, name, None)) for name in entry_points), spec.name


def test_two_models_writing_one_table_are_refused(monkeypatch):
    twin = dataclasses.replace(SPEC, name="toy_twin")
    monkeypatch.setattr(registry, "MODELS", (SPEC, twin))
    with pytest.raises(ValueError, match="ml.toy_scores is written by more than one model"):
        registry.output_tables()


# ---- trained models: stored fits, refit rule, drift, realised performance -------------------------

def _load_training(url: str, snapshots: dict[dt.date, dict[str, bool]]) -> None:
    rows = [
        {"customer_id": customer, "as_of_date": day, "spend": 10.0 * (index + 1), "churned": churned}
        for day, labels in snapshots.items()
        for index, (customer, churned) in enumerate(labels.items())
    ]
    with connect(url) as warehouse:
        warehouse.ensure_table(
            "features.toy_training", {"customer_id": "string", "as_of_date": "date", "spend": "double", "churned": "boolean"}
        )
        warehouse.execute("delete from features.toy_training")
        warehouse.append_arrow("features.toy_training", pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False))


MAY = dt.date(2025, 5, 31)
APRIL = dt.date(2025, 4, 30)


def test_a_trained_model_is_stored_reused_while_its_training_data_is_unchanged_and_refitted_when_it_changes(warehouse_url):
    _load_features(warehouse_url, DAY, SPENDS)
    _load_training(warehouse_url, {APRIL: {"ann": True, "ben": False, "cat": False, "dan": False}})
    first = tasks.run_model(toy_model.TRAINED_SPEC, DAY, "day-1", warehouse_url=warehouse_url)
    assert first["status"] == "published"
    assert first["metrics"]["refitted"] and first["metrics"]["trained_as_of"] == DAY.isoformat()
    assert first["metrics"]["training_rows_read"] == {"features.toy_training": 4}
    _load_features(warehouse_url, NEXT_DAY, SPENDS)
    second = tasks.run_model(toy_model.TRAINED_SPEC, NEXT_DAY, "day-2", warehouse_url=warehouse_url)
    assert not second["metrics"]["refitted"] and second["metrics"]["model_age_days"] == 1
    assert second["metrics"]["fitted_rows"] == 4  # the fit's own metrics travel with it
    assert second["training_fingerprint"] == first["training_fingerprint"]
    assert _rows(warehouse_url, "select distinct churn_probability from ml.toy_churn") == [(0.25,)]
    # A new monthly snapshot changes the training data: refit (and the stored fit of that date replaced on a rerun).
    _load_training(warehouse_url, {APRIL: {"ann": True, "ben": False, "cat": False, "dan": False},
                                   MAY: {"ann": True, "ben": True, "cat": False, "dan": False}})
    third = tasks.run_model(toy_model.TRAINED_SPEC, NEXT_DAY, "day-2-rerun", warehouse_url=warehouse_url)
    assert third["metrics"]["refitted"] and "training data changed" in third["metrics"]["refit_reason"]
    assert _rows(warehouse_url, "select churn_probability from ml.toy_churn where as_of_date = ? limit 1", (NEXT_DAY,)) == [(0.375,)]
    assert _rows(warehouse_url, "select as_of_date, count(*) from ml.trained_models group by 1 order by 1") == [(DAY, 1), (NEXT_DAY, 1)]
    # An earlier date never scores with a fit trained later (point in time): it uses its own.
    again = tasks.run_model(toy_model.TRAINED_SPEC, DAY, "day-1-rerun", warehouse_url=warehouse_url)
    assert again["metrics"]["trained_as_of"] == DAY.isoformat()


def test_a_stored_fit_is_reused_while_its_training_data_moved_within_the_tolerance_and_refitted_past_it(warehouse_url):
    spec = dataclasses.replace(toy_model.TRAINED_SPEC, training_change_tolerance=0.3)
    snapshot = {"ann": True, "ben": False, "cat": False, "dan": False}
    _load_features(warehouse_url, DAY, SPENDS)
    _load_training(warehouse_url, {APRIL: snapshot})
    tasks.run_model(spec, DAY, "day-1", warehouse_url=warehouse_url)
    _load_features(warehouse_url, NEXT_DAY, SPENDS)
    # One more row of four (25%), its label unchanged: within 30%, the fit of the first day scores.
    _load_training(warehouse_url, {APRIL: {**snapshot, "eve": False}})
    moved = tasks.run_model(spec, NEXT_DAY, "day-2", warehouse_url=warehouse_url)
    assert not moved["metrics"]["refitted"] and moved["metrics"]["training_change_since_fit"] == 0.25
    # Two more of four (50%) measured against the fit, not against the day before: refit.
    _load_training(warehouse_url, {APRIL: {**snapshot, "eve": False, "fay": True}})
    refit = tasks.run_model(spec, NEXT_DAY, "day-2-rerun", warehouse_url=warehouse_url)
    assert refit["metrics"]["refitted"] and "an aggregate moved 100.00%" in refit["metrics"]["refit_reason"]
    # A new snapshot always refits, however small.
    _load_training(warehouse_url, {APRIL: {**snapshot, "eve": False, "fay": True}, MAY: {"ann": True}})
    tasks.run_model(spec, NEXT_DAY, "day-2-new-snapshot", warehouse_url=warehouse_url)
    assert "a snapshot came or went" in _runs(warehouse_url)[-1]["metrics"]


def test_a_stored_fit_past_its_max_age_or_of_other_settings_is_refitted(warehouse_url):
    _load_features(warehouse_url, DAY, SPENDS)
    _load_training(warehouse_url, {APRIL: {"ann": True, "ben": False, "cat": False, "dan": False}})
    tasks.run_model(toy_model.TRAINED_SPEC, DAY, "day-1", warehouse_url=warehouse_url)
    later = DAY + dt.timedelta(days=31)
    _load_features(warehouse_url, later, SPENDS)
    aged = tasks.run_model(toy_model.TRAINED_SPEC, later, "day-31", warehouse_url=warehouse_url)
    assert aged["metrics"]["refitted"] and "older than 30 days" in aged["metrics"]["refit_reason"]
    other = tasks.run_model(toy_model.TRAINED_SPEC, later, "day-31-b", {"toy_trained": {"reported_quality": 0.8}}, warehouse_url)
    assert other["metrics"]["refitted"] and other["metrics"]["refit_reason"] == "no stored fit of this version and settings"


def test_a_fit_below_its_floor_is_neither_stored_nor_published(warehouse_url):
    _load_features(warehouse_url, DAY, SPENDS)
    _load_training(warehouse_url, {APRIL: {"ann": True, "ben": False, "cat": False, "dan": False}})
    with pytest.raises(QualityBelowFloor, match="heldout_quality = 0.1"):
        tasks.run_model(toy_model.TRAINED_SPEC, DAY, "bad", {"toy_trained": {"reported_quality": 0.1}}, warehouse_url)
    with connect(warehouse_url) as warehouse:
        assert not warehouse.table_columns("ml.trained_models") or not warehouse.fetchall("select * from ml.trained_models")
    assert [run["status"] for run in _runs(warehouse_url)] == ["below_floor"]


def test_training_reads_a_customer_sample_past_the_row_cap_the_same_customers_every_time(warehouse_url):
    customers = {f"c{index:03d}": index % 3 == 0 for index in range(300)}
    _load_training(warehouse_url, {APRIL: customers, MAY: customers})
    table = toy_model.TRAINED_SPEC.trains_on[0]
    with connect(warehouse_url) as warehouse:
        whole = warehouse_io.read_training(warehouse, table, 600)
        sample = warehouse_io.read_training(warehouse, table, 300)
        again = warehouse_io.read_training(warehouse, table, 300)
    assert len(whole) == 600
    assert 200 < len(sample) < 400 and sorted(sample["customer_id"]) == sorted(again["customer_id"])
    assert (sample.groupby("customer_id").size() == 2).all()  # whole customers: every snapshot of each


def test_drift_above_the_warning_level_is_logged_and_listed(warehouse_url, caplog):
    _load_training(warehouse_url, {APRIL: {f"c{index}": index % 2 == 0 for index in range(40)}})
    _load_features(warehouse_url, DAY, {f"c{index}": 5000.0 + index for index in range(40)})
    with caplog.at_level("WARNING", logger="ml_tasks.tasks"):
        run = tasks.run_model(toy_model.TRAINED_SPEC, DAY, "drifted", warehouse_url=warehouse_url)
    assert run["metrics"]["drift_psi"]["spend"] > 0.2 and run["metrics"]["drift_warnings"] == ["spend"]
    assert "spend drifted from the training data" in caplog.text


@pytest.mark.parametrize("cat_merged_into_ann", [False, True])
def test_realised_performance_is_measured_once_the_outcome_window_has_passed(warehouse_url, cat_merged_into_ann):
    _load_training(warehouse_url, {APRIL: {"ann": True, "ben": False, "cat": False, "dan": False}})
    # Merged after the scoring, cat's key retires: its order now counts for ann, under whom cat's
    # score is measured.
    orders = pd.DataFrame({
        "customer_id": ["ben", "ann" if cat_merged_into_ann else "cat", "dan", "ann"],
        "order_date": [DAY + dt.timedelta(days=3), DAY + dt.timedelta(days=5), DAY + dt.timedelta(days=9), DAY + dt.timedelta(days=11)],
        "is_revenue": [True, True, False, True],
        "net_amount": [20.0, 30.0, 40.0, 50.0],
    })
    with connect(warehouse_url) as warehouse:
        warehouse.ensure_table("features.orders_as_known", {"customer_id": "string", "order_date": "date", "is_revenue": "boolean",
                                                             "net_amount": "double", "known_from": "date", "known_until": "date"})
        # Each order known from the day it was placed.
        known = orders.assign(known_from=orders["order_date"], known_until=None)
        warehouse.append_arrow("features.orders_as_known", pa.Table.from_pandas(known, preserve_index=False))
        if cat_merged_into_ann:
            warehouse.ensure_table("marts.customer_key_aliases", {"retired_customer_id": "string", "customer_id": "string"})
            warehouse.execute("insert into marts.customer_key_aliases values ('cat', 'ann')")
    for day in (DAY, DAY + dt.timedelta(days=9), DAY + dt.timedelta(days=10)):
        _load_features(warehouse_url, day, SPENDS)
        tasks.run_model(toy_model.TRAINED_SPEC, day, f"run-{day}", warehouse_url=warehouse_url)
    rows = _rows(warehouse_url, "select as_of_date, metric, value, customers, measured_as_of from ml.model_performance order by metric")
    # Only the first date's 10-day window has closed (on its last day); ann's order came on day 11: churned.
    assert {row[0] for row in rows} == {DAY} and {row[4] for row in rows} == {DAY + dt.timedelta(days=10)}
    metrics = {row[1]: row[2] for row in rows}
    assert metrics["predicted_rate"] == 0.25 and rows[0][3] == 4
    if cat_merged_into_ann:  # ann's own order fell after the window, cat's (now ann's) within it
        assert metrics["realised_rate"] == 0.0
    else:
        assert metrics["realised_rate"] == 0.25 and metrics["brier"] == pytest.approx(0.1875)
