"""The ML tasks' warehouse steps, publish and BI's views on a Spark warehouse (warehouse/adapter.py's
_SparkWarehouse: parquet tables, no DELETE): a model's history thinned, the marts' copies brought
level (copied whole, by key, a key gone, a mart gone), BI's views made again over them, a training
sample drawn, the association model's rules mined on the session (MLlib's FPGrowth) equal to the
single machine's. Small tables made through the adapter: the whole pipeline on Spark is
crm_daily's run in tests/test_spark_end_to_end.py."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ml_tasks import association, registry, tasks, warehouse_io
from ml_tasks.contract import InputTable, OutputTable
from tests.spark_support import module_spark_session
from warehouse import connect
from warehouse.bi import drop_bi_views, publish_bi_views
from warehouse.publish import PUBLISH_LOG, PUBLISH_WATERMARKS, publish_marts

pytestmark = [
    pytest.mark.spark,
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]

DAY = dt.date(2025, 6, 30)
SALT = "0123456789abcdef-salt"


@pytest.fixture(scope="module")
def spark_url(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("spark-ml")
    with module_spark_session(folder, "test-ml-spark", "the ML tasks on Spark"):
        yield f"spark://{folder}"


def test_thinning_a_models_history_deletes_the_dropped_dates_rows_on_spark(spark_url, monkeypatch):
    monkeypatch.setenv("CRMW_ML_DAILY_HISTORY_DAYS", "2")
    monkeypatch.setenv("CRMW_ML_MONTHLY_HISTORY_MONTHS", "0")
    scores = OutputTable("ml.toy_thinned_scores", {"customer_id": "string", "score": "double"}, "toy", thinned_history=True)
    days = [DAY - dt.timedelta(days=back) for back in (4, 3, 1, 0)]
    with connect(spark_url) as warehouse:
        warehouse_io.ensure_outputs(warehouse, [scores, warehouse_io.MODEL_RUNS])
        # Each day's two rows and published run, written at once: each write on Spark is a job.
        warehouse.append_arrow(scores.name, pa.table({
            "customer_id": ["a", "b"] * len(days), "score": [0.1, 0.2] * len(days), "as_of_date": [day for day in days for _ in range(2)]}))
        warehouse.append_arrow(warehouse_io.MODEL_RUNS.name, pa.table({
            "model_name": ["toy"] * len(days), "as_of_date": days, "status": [warehouse_io.PUBLISHED] * len(days),
            "finished_at": [dt.datetime(2025, 7, 1, hour) for hour in range(len(days))]}))
        # 2025-06-26 and -27 are more than two days back and not a month's last date kept.
        assert warehouse_io.thin_history(warehouse, [scores], "toy", DAY) == 4
        held = warehouse.fetchall(f"select as_of_date, count(*) from {scores.name} group by 1 order by 1")
        assert held == [(DAY - dt.timedelta(days=1), 2), (DAY, 2)]
        assert warehouse_io.thin_history(warehouse, [scores], "toy", DAY) == 0


def _manifest(folder: Path, marts: dict[str, str | None]) -> Path:
    """A dbt manifest naming `marts` (name -> unique key, None for a mart rebuilt whole)."""
    nodes = {
        f"model.crm.{name}": {"resource_type": "model", "name": name, "config": {
            "schema": "marts", "materialized": "incremental" if key else "table", "meta": {}, "unique_key": key}}
        for name, key in marts.items()
    }
    path = folder / "manifest.json"
    path.write_text(json.dumps({"nodes": nodes}))
    return path


def _mart_rows(warehouse, table: str, rows: list[tuple]) -> None:
    """Make `rows` (in the table's column order) all `table` holds, as dbt's build of a mart would."""
    values = ", ".join(f"({', '.join('?' for _ in row)})" for row in rows)
    warehouse.execute(f"insert overwrite table {table} values {values}", [value for row in rows for value in row])


def test_publish_brings_the_copies_level_by_whole_copy_and_by_key_and_drops_a_gone_mart_on_spark(spark_url, tmp_path):
    built = [dt.datetime(2025, 6, 29, 1), dt.datetime(2025, 6, 30, 1)]
    manifest = _manifest(tmp_path, {"dim_shops": None, "fct_sales": "sale_id"})
    with connect(spark_url) as warehouse:
        warehouse.ensure_table("marts.dim_shops", {"shop_id": "string", "city": "string"})
        warehouse.ensure_table("marts.fct_sales", {"sale_id": "string", "amount": "double", "_built_at": "timestamp"})
        _mart_rows(warehouse, "marts.dim_shops", [("s1", "Lyon"), ("s2", "Oslo")])
        _mart_rows(warehouse, "marts.fct_sales", [("x1", 1.0, built[0]), ("x2", 2.0, built[0]), ("x3", 3.0, built[0])])
        warehouse.ensure_table("published.dim_retired", {"shop_id": "string"})
        assert publish_marts(warehouse, DAY - dt.timedelta(days=1), "run-1", manifest) == {"dim_shops": 2, "fct_sales": 3}
        assert not warehouse.table_columns("published.dim_retired")

        # The next build: a shop renamed, a sale rewritten, one new, one gone from the source.
        _mart_rows(warehouse, "marts.dim_shops", [("s1", "Lyon"), ("s2", "Bergen")])
        _mart_rows(warehouse, "marts.fct_sales", [("x1", 1.0, built[0]), ("x2", 2.5, built[1]), ("x4", 4.0, built[1])])
        assert publish_marts(warehouse, DAY, "run-2", manifest) == {"dim_shops": 2, "fct_sales": 2}
        for mart in ("dim_shops", "fct_sales"):
            published = warehouse.fetchall(f"select * from published.{mart} order by 1")
            assert published == warehouse.fetchall(f"select * from marts.{mart} order by 1"), mart
        assert warehouse.fetchall(f"select mart, built_at from {PUBLISH_WATERMARKS}") == [("fct_sales", built[1])]
        assert warehouse.fetchall(f"select as_of_date, run_id, marts, rows_written from {PUBLISH_LOG} order by 1") == [
            (DAY - dt.timedelta(days=1), "run-1", 2, 5), (DAY, "run-2", 2, 4)]


def test_bi_views_are_made_again_over_the_published_tables_on_spark(spark_url):
    with connect(spark_url) as warehouse:
        warehouse.ensure_table("published.people", {"customer_id": "string", "email": "string", "birth_date": "date"})
        warehouse.execute("insert into published.people values ('c1', 'ann@example.com', date'2000-07-01'),"
                          " ('c2', null, date'1950-01-01')")
        tables = {"people": "published.people", "churn_scores": "ml.no_such_table"}
        for _ in range(2):  # the second time over the views of the first, as each day's publish
            assert publish_bi_views(warehouse, tables, SALT, DAY) == ["people"]
        rows = warehouse.fetchall("select * from bi.people order by age_band desc")
        assert rows == [(hashlib.md5(f"{SALT}c1".encode()).hexdigest(), "under 25"),
                        (hashlib.md5(f"{SALT}c2".encode()).hexdigest(), "65 and over")]
        assert warehouse.fetchall("select as_of_date from bi.bi_info") == [(DAY,)]
        drop_bi_views(warehouse)
        assert warehouse.table_columns("bi.bi_info") and not warehouse.table_columns("bi.people")


def test_a_training_sample_and_a_row_filter_read_on_spark(spark_url):
    table = InputTable("features.toy_offers", columns=("customer_id", "rank"), row_filter="rank = 1")
    with connect(spark_url) as warehouse:
        warehouse.ensure_table(table.name, {"customer_id": "string", "rank": "integer", "as_of_date": "date"})
        customers = [f"customer-{number}" for number in range(200)]
        warehouse.append_arrow(table.name, pa.table({"customer_id": customers * 2, "rank": [1] * 200 + [2] * 200,
                                                     "as_of_date": [DAY] * 400}))
        sample = warehouse_io.read_training(warehouse, table, max_rows=100)
        assert warehouse_io.read_input(warehouse, table, DAY)["rank"].tolist() == [1] * 200
    # The customers whose md5's first four hex digits fall under the share's bound, both of their rows.
    bound = warehouse_io.sample_threshold(100 / 400)
    expected = sorted(c for c in customers if hashlib.md5(c.encode()).hexdigest()[:4] < bound)
    assert sorted(sample["customer_id"].unique()) == expected and len(sample) == 2 * len(expected)


def _baskets(count: int, seed: int = 7) -> pd.DataFrame:
    """features.basket_items rows of `count` baskets over 30 days: skus in pairs bought together."""
    generator = np.random.default_rng(seed)
    rows = []
    for basket in range(count):
        first = int(generator.integers(0, 12))
        skus = {first, first ^ 1} if generator.random() < 0.6 else {first}
        skus.add(int(generator.integers(0, 12)))
        for sku in sorted(skus):
            rows.append({"basket_id": f"b{basket}", "sku": f"sku-{sku}", "category": f"cat-{sku // 4}",
                         "customer_id": f"c{basket % 90}", "order_date": pd.Timestamp(DAY) - pd.Timedelta(days=basket % 30)})
    return pd.DataFrame(rows)


def test_the_association_model_mines_on_the_warehouses_spark_session_with_the_single_machines_rules(spark_url):
    spec = registry.model("association_rules")
    assert spec.fits_on_spark and tasks.spark_session(spec, "duckdb") is None
    with connect(spark_url):
        session = tasks.spark_session(spec, "spark")
    from pyspark.sql import SparkSession

    assert session is SparkSession.getActiveSession() is not None
    settings = association.AssociationSettings(min_baskets=50, min_support_baskets=8)
    training = {association.BASKETS_TABLE: _baskets(400)}
    single_fit, single_metrics = association.fit(training, DAY, settings)
    spark_fit, spark_metrics = association.fit(training, DAY, settings, spark=session)
    assert len(single_fit.rules) > 10
    pd.testing.assert_frame_equal(spark_fit.rules, single_fit.rules)
    assert spark_metrics == single_metrics
