"""The one place ML code touches the warehouse: read feature tables for an as-of date, publish
results by their declared schema, record every run in ml.model_runs, refresh BI's `_latest` views.

A run's outputs for an as-of date replace that date's earlier rows of every table the model writes,
together with its ml.model_runs row, in one transaction: a rerun never duplicates, earlier dates
stay, and BI never sees half a run.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ml_tasks.contract import PANDAS_DTYPES, STAMP_COLUMNS, InputTable, OutputTable
from warehouse import ColumnType, Warehouse, connect
from warehouse.adapter import qualified, quote_identifier

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

ML_SCHEMA = "ml"
MODEL_RUNS = OutputTable(
    f"{ML_SCHEMA}.model_runs",
    {
        "model_name": "string",
        "model_version": "string",
        "run_id": "string",
        "as_of_date": "date",
        "status": "string",
        "rows_in": "integer",
        "rows_out": "integer",
        "parameters": "string",
        "metrics": "string",
        "training_fingerprint": "string",
        "seconds": "double",
        "peak_memory_mb": "double",
        "message": "string",
        "finished_at": "timestamp",
    },
    "One row per model task run: what ran, on what, how it ended and what it measured.",
)
# Run statuses recorded in ml.model_runs.
PUBLISHED, INSUFFICIENT_DATA, BELOW_FLOOR, FAILED = "published", "insufficient_data", "below_floor", "failed"


class MissingFeatureDate(ValueError):
    """A feature table holds rows, but none for the as-of date: dbt has not run for that date."""


def read_input(warehouse: Warehouse, table: InputTable, as_of_date: dt.date, window_days: int | None = None) -> "pd.DataFrame":
    """Rows of `table` for `as_of_date` (and, for a windowed input, whose window column falls in the
    `window_days` days ending on it). An empty table gives no rows (a new install); a table holding
    other dates only raises MissingFeatureDate naming the dates it holds."""
    columns = ", ".join(quote_identifier(column) for column in table.columns) if table.columns else "*"
    sql = f"select {columns} from {qualified(table.name)} where as_of_date = ?"
    values: list[Any] = [as_of_date]
    if table.window_column and window_days is not None:
        sql += f" and {quote_identifier(table.window_column)} > ?"
        values.append(as_of_date - dt.timedelta(days=window_days))
    frame = warehouse.fetch_df(sql, values)
    if frame.empty:
        (first, last, dates) = warehouse.fetchall(
            f"select min(as_of_date), max(as_of_date), count(distinct as_of_date) from {qualified(table.name)}"
        )[0]
        if dates and not _holds_date(warehouse, table.name, as_of_date):
            held = f"{_day(first)}" if dates == 1 else f"{dates} dates from {_day(first)} to {_day(last)}"
            raise MissingFeatureDate(
                f"{table.name} holds features as of {held}, not {as_of_date}: run the dbt step for {as_of_date} first"
            )
    return frame


def read_previous(warehouse: Warehouse, table: OutputTable, as_of_date: dt.date) -> "pd.DataFrame":
    """The rows of the latest as-of date before `as_of_date` that the model published in `table`;
    no rows (with the declared columns) when it never has."""
    if not warehouse.table_columns(table.name):
        return empty_frame(table.all_columns)
    columns = ", ".join(quote_identifier(column) for column in table.all_columns)
    name = qualified(table.name)
    return warehouse.fetch_df(
        f"select {columns} from {name} where as_of_date = (select max(as_of_date) from {name} where as_of_date < ?)",
        (as_of_date,),
    )


def _holds_date(warehouse: Warehouse, table: str, as_of_date: dt.date) -> bool:
    return bool(warehouse.fetchall(f"select 1 from {qualified(table)} where as_of_date = ? limit 1", (as_of_date,)))


def _day(value: Any) -> str:
    return value.isoformat()[:10] if hasattr(value, "isoformat") else str(value)


def empty_frame(columns: Mapping[str, ColumnType]) -> "pd.DataFrame":
    """No rows, the given columns in the dtypes the warehouse reads them back in."""
    import pandas as pd

    return pd.DataFrame({column: pd.Series(dtype=PANDAS_DTYPES[kind]) for column, kind in columns.items()})


def to_arrow(table: OutputTable, frame: "pd.DataFrame", stamps: Mapping[str, Any]) -> "pa.Table":
    """`frame` as Arrow in the declared types, stamped; a missing or undeclared column raises,
    naming the table and the column."""
    import pyarrow as pa

    missing = [column for column in table.columns if column not in frame.columns]
    extra = [column for column in frame.columns if column not in table.columns]
    if missing or extra:
        problem = f"missing column {missing[0]!r}" if missing else f"undeclared column {extra[0]!r}"
        raise ValueError(f"{table.name}: results have a {problem}; declared: {', '.join(table.columns)}")
    arrays = {column: _arrow_array(table.name, column, frame[column], kind) for column, kind in table.columns.items()}
    for column, kind in STAMP_COLUMNS.items():
        if column not in arrays:
            arrays[column] = _arrow_array(table.name, column, [stamps[column]] * len(frame), kind)
    return pa.table(arrays)


_ARROW_TYPES = {
    "string": "string",
    "integer": "int64",
    "double": "float64",
    "boolean": "bool",
    "date": "date32",
    "timestamp": "timestamp[us]",
}


def _arrow_array(table: str, column: str, values: Any, kind: ColumnType) -> "pa.Array":
    import pandas as pd
    import pyarrow as pa

    series = pd.Series(values)
    try:
        if kind == "date":
            series = pd.to_datetime(series).dt.date
        elif kind == "timestamp":
            series = pd.to_datetime(series)
        elif kind == "decimal":
            kind = "double"
        return pa.array(series.astype(object).where(series.notna(), None), type=pa.type_for_alias(_ARROW_TYPES[kind]), from_pandas=True)
    except (TypeError, ValueError, pa.ArrowException) as error:
        raise ValueError(f"{table}.{column}: values do not fit the declared type {kind} ({error})") from error


def record_run(warehouse: Warehouse, run: Mapping[str, Any]) -> None:
    """Append one ml.model_runs row (`parameters` and `metrics` as JSON)."""
    import pandas as pd

    row = {
        **{column: run.get(column) for column in MODEL_RUNS.columns},
        "parameters": json.dumps(run.get("parameters", {}), sort_keys=True, default=str),
        "metrics": json.dumps(run.get("metrics", {}), sort_keys=True, default=str),
        "finished_at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
    }
    warehouse.ensure_table(MODEL_RUNS.name, MODEL_RUNS.columns)
    warehouse.append_arrow(MODEL_RUNS.name, to_arrow(MODEL_RUNS, pd.DataFrame([row]), {}))


def ensure_outputs(warehouse: Warehouse, tables: Sequence[OutputTable]) -> None:
    """Create every output table with its declared columns (and add a newly declared column)."""
    for table in tables:
        warehouse.ensure_table(table.name, table.all_columns)


def publish(
    warehouse: Warehouse,
    outputs: Sequence[OutputTable],
    results: Mapping[str, "pd.DataFrame"],
    as_of_date: dt.date,
    run_id: str,
    model_version: str,
    run: Mapping[str, Any],
) -> int:
    """Replace each output's rows for `as_of_date` by `results` and record the run, in one
    transaction. Returns the rows written."""
    stamps = {"as_of_date": as_of_date, "run_id": run_id, "model_version": model_version}
    data = {table.name: to_arrow(table, results[table.name], stamps) for table in outputs}
    ensure_outputs(warehouse, outputs)
    written = 0
    with warehouse.transaction():
        for table in outputs:
            written += warehouse.replace_rows(table.name, {"as_of_date": as_of_date}, data[table.name])
        record_run(warehouse, {**run, "rows_out": written})
    return written


def publish_latest_views(tables: Sequence[OutputTable], bi_role: str, bi_schemas: Sequence[str], warehouse_url: str | None = None) -> None:
    """`<table>_latest` views (the rows of each table's newest as-of date) for every output, and a
    read-only grant on the BI schemas to `bi_role`."""
    with connect(warehouse_url) as warehouse:
        ensure_outputs(warehouse, [*tables, MODEL_RUNS])
        with warehouse.transaction():
            for table in [*tables, MODEL_RUNS]:
                name = qualified(table.name)
                warehouse.execute(
                    f"create or replace view {name}_latest as select * from {name}"
                    f" where as_of_date = (select max(as_of_date) from {name})"
                )
        warehouse.grant_read_only(bi_role, bi_schemas)
