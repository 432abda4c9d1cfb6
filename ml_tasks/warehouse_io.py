"""The one place ML code touches the warehouse: read feature tables, publish results.

Results for an as-of date replace that date's earlier results in one transaction, together with
the run's metrics in ml.model_runs, so a rerun of a day never duplicates and BI never sees half.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING

from warehouse import ColumnType, connect

if TYPE_CHECKING:
    import pandas as pd

ML_SCHEMA = "ml"
MODEL_RUNS = f"{ML_SCHEMA}.model_runs"
_MODEL_RUN_COLUMNS: dict[str, ColumnType] = {
    "model_name": "string",
    "model_version": "string",
    "run_id": "string",
    "as_of_date": "date",
    "metrics": "string",
    "published_at": "timestamp",
}


def read_features(table: str, warehouse_url: str | None = None) -> "pd.DataFrame":
    with connect(warehouse_url) as warehouse:
        return warehouse.fetch_df(f"select * from {table}")


def _column_type(dtype: object) -> ColumnType:
    import pandas as pd

    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "integer"
    if pd.api.types.is_float_dtype(dtype):
        return "double"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "date"
    return "string"


def publish_results(
    table: str,
    results: "pd.DataFrame",
    *,
    model_name: str,
    model_version: str,
    as_of_date: dt.date,
    run_id: str,
    metrics: dict,
    warehouse_url: str | None = None,
) -> int:
    """Replace `table`'s rows for `as_of_date` by `results` and record the run's metrics."""
    import pyarrow as pa

    columns = {name: _column_type(dtype) for name, dtype in results.dtypes.items()}
    frame = results.copy()
    for name, column_type in columns.items():
        if column_type == "date":
            frame[name] = frame[name].dt.date
    data = pa.Table.from_pandas(frame, preserve_index=False)
    run = pa.Table.from_pylist(
        [
            {
                "model_name": model_name,
                "model_version": model_version,
                "run_id": run_id,
                "as_of_date": as_of_date,
                "metrics": json.dumps(metrics, sort_keys=True),
                "published_at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
            }
        ]
    )
    with connect(warehouse_url) as warehouse:
        warehouse.ensure_table(table, columns)
        warehouse.ensure_table(MODEL_RUNS, _MODEL_RUN_COLUMNS)
        with warehouse.transaction():
            written = warehouse.replace_rows(table, {"as_of_date": as_of_date}, data)
            warehouse.replace_rows(MODEL_RUNS, {"model_name": model_name, "as_of_date": as_of_date}, run)
    return written


def publish_latest_views(tables: list[str], bi_role: str, bi_schemas: list[str], warehouse_url: str | None = None) -> None:
    """Create `<table>_latest` views (rows of the newest as-of date) and let BI's role read."""
    with connect(warehouse_url) as warehouse:
        with warehouse.transaction():
            for table in tables:
                warehouse.execute(
                    f"create or replace view {table}_latest as select * from {table}"
                    f" where as_of_date = (select max(as_of_date) from {table})"
                )
        warehouse.grant_read_only(bi_role, bi_schemas)
