"""The one place ML code touches the warehouse: read feature tables for an as-of date, publish
results by their declared schema, record every run in ml.model_runs, refresh BI's `_latest` views.

A run's outputs for an as-of date replace that date's earlier rows of every table the model writes,
together with its ml.model_runs row, in one transaction: a rerun never duplicates, earlier dates
stay (those of the per-customer outputs thinned by the history policy), and BI never sees half a run.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ml_tasks.contract import PANDAS_DTYPES, STAMP_COLUMNS, HistoryPolicy, InputTable, OutputTable, iso_day
from warehouse import ColumnType, Warehouse
from warehouse.adapter import qualified, quote_identifier, sql_type

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

log = logging.getLogger(__name__)

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
        "phase_seconds": "string",
        "peak_memory_mb": "double",
        "message": "string",
        "finished_at": "timestamp",
    },
    "One row per model task run: what ran, on what, how it ended and what it measured.",
)
# Fitted trained models, one row per fit: loaded for scoring until the spec's rule says refit.
# `artifact` is the fitted object pickled, zlib-compressed, base64 text (portable across engines).
# Unpickling runs code: only the pipeline's own role may write the ml schema (BI's reads it).
TRAINED_MODELS = OutputTable(
    f"{ML_SCHEMA}.trained_models",
    {
        "model_name": "string",
        "settings_digest": "string",
        "training_fingerprint": "string",
        "metrics": "string",
        "artifact": "string",
        "artifact_bytes": "integer",
        "trained_at": "timestamp",
    },
    "One row per fit of a trained model (as_of_date: the date it was trained as of): the fitted"
    " model (pickled, compressed, base64), the fingerprint of its training data and its validation metrics.",
)
# Run statuses recorded in ml.model_runs.
PUBLISHED, INSUFFICIENT_DATA, BELOW_FLOOR, FAILED = "published", "insufficient_data", "below_floor", "failed"


class MissingFeatureDate(ValueError):
    """A feature table holds rows, but none for the as-of date: dbt has not run for that date."""


def read_input(warehouse: Warehouse, table: InputTable, as_of_date: dt.date, window_days: int | None = None) -> "pd.DataFrame":
    """Rows of `table` for `as_of_date` (and, for a windowed input, whose window column falls in the
    `window_days` days ending on it; for an undated one, a mart, the window's rows up to the date). An empty table gives no rows (a new install); a table holding
    other dates only raises MissingFeatureDate naming the dates it holds."""
    columns = ", ".join(quote_identifier(column) for column in table.columns) if table.columns else "*"
    condition, values = _input_rows(table, as_of_date, window_days)
    frame = warehouse.fetch_df(f"select {columns} from {qualified(table.name)} where {condition}", values, table.categorical)
    if frame.empty and table.dated and not table.may_lack_date:
        (first, last, dates) = warehouse.fetchall(
            f"select min(as_of_date), max(as_of_date), count(distinct as_of_date) from {qualified(table.name)}"
        )[0]
        if dates and not _holds_date(warehouse, table.name, as_of_date):
            held = f"{iso_day(first)}" if dates == 1 else f"{dates} dates from {iso_day(first)} to {iso_day(last)}"
            raise MissingFeatureDate(
                f"{table.name} holds features as of {held}, not {as_of_date}: run the dbt step for {as_of_date} first"
            )
    return frame


def read_training(warehouse: Warehouse, table: InputTable, max_rows: int | None = None) -> "pd.DataFrame":
    """Every row of a training input, or, past `max_rows`, the rows of a sample of customers drawn
    by the first four hex digits of md5(customer_id) (the same customers every day, on both engines)."""
    columns = ", ".join(quote_identifier(column) for column in table.columns) if table.columns else "*"
    sql = f"select {columns} from {qualified(table.name)}"
    if max_rows is not None:
        (rows,) = warehouse.fetchall(f"select count(*) from {qualified(table.name)}")[0]
        if rows > max_rows:
            text = sql_type(warehouse.engine, "string")
            sql += f" where substr(md5(cast(customer_id as {text})), 1, 4) < '{sample_threshold(max_rows / rows)}'"
    return warehouse.fetch_df(sql)


def _input_rows(table: InputTable, as_of_date: dt.date, window_days: int | None) -> tuple[str, list[Any]]:
    """The condition (and its values) picking read_input's rows of `table`."""
    if table.dated:
        condition = "as_of_date = ?"
    else:
        condition = f"{quote_identifier(table.window_column)} <= ?"
    values: list[Any] = [as_of_date]
    if table.window_column and window_days is not None:
        condition += f" and {quote_identifier(table.window_column)} > ?"
        values.append(as_of_date - dt.timedelta(days=window_days))
    if table.row_filter:
        condition += f" and ({table.row_filter})"
    return condition, values


def sample_threshold(share: float) -> str:
    """The four-hex-digit bound below which `share` of md5 prefixes fall."""
    return f"{min(0xFFFF, max(1, round(share * 0x10000))):04x}"


def training_signature(warehouse: Warehouse, tables: Sequence[InputTable], signature: Sequence[str],
                       as_of_date: dt.date, scored: Mapping[str, int | None]) -> dict[str, list[list]]:
    """The `signature` aggregates of each training table per as_of_date, as JSON-ready rows
    [date, value, ...]: what the fingerprint digests, kept with a fit to measure later changes. A
    table the model also reads to score (`scored`: its window days by table name, None for no
    window) is trained on the rows it reads and gives one row over them, ["window", value, ...] (a
    windowed one) or ["as_of_date", value, ...]: those rows move every day, and the aggregates
    measure how far."""
    def rows(table: InputTable) -> list[tuple]:
        aggregates = ", ".join(signature)
        if table.name in scored:
            condition, values = _input_rows(table, as_of_date, scored[table.name])
            label = "window" if table.window_setting else "as_of_date"
            return [(label, *row) for row in warehouse.fetchall(
                f"select {aggregates} from {qualified(table.name)} where {condition}", values)]
        source = table.signature_from or table.name
        return warehouse.fetchall(
            f"select as_of_date, {aggregates} from {qualified(source)} group by as_of_date order by as_of_date")

    return {
        table.name: [
            [row[0] if isinstance(row[0], str) else iso_day(row[0]), *(None if value is None else float(value) for value in row[1:])]
            for row in rows(table)
        ]
        for table in tables
    }


def training_fingerprint(signature: Mapping[str, Sequence[Sequence]]) -> str:
    """A digest of a training signature: equal while the training data is (no new snapshot, no
    label changed)."""
    import hashlib

    digest = hashlib.sha256()
    for name, rows in signature.items():
        digest.update(f"{name}:{_signature_text(rows)};".encode())
    return digest.hexdigest()[:32]


def training_change(fitted_on: Mapping[str, Sequence[Sequence]] | None, now: Mapping[str, Sequence[Sequence]]) -> float | None:
    """The largest relative change of any aggregate of any snapshot since a fit (|now - then| /
    max(|then|, 1)); None when the fit recorded no signature, or a table or snapshot came or went.
    Tables are matched by name: a stored signature's JSON has its tables in sorted order."""
    if not fitted_on or sorted(fitted_on) != sorted(now):
        return None
    largest = 0.0
    for name, rows in now.items():
        then = fitted_on[name]
        if [row[0] for row in then] != [row[0] for row in rows]:
            return None
        for old_row, new_row in zip(then, rows):
            for old, new in zip(old_row[1:], new_row[1:]):
                if (old is None) != (new is None):
                    return None
                if old is not None:
                    largest = max(largest, abs(new - old) / max(abs(old), 1.0))
    return largest


def _signature_text(rows: Sequence[Sequence]) -> str:
    # training_signature already made the dates ISO text and the numbers floats (a sum is a Decimal
    # on one engine and a float on another); floats are rounded to cents.
    def text(value: Any) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    return "|".join(",".join(text(value) for value in row) for row in rows)


def load_fit(warehouse: Warehouse, model_name: str, model_version: str, settings_digest: str, as_of_date: dt.date) -> dict | None:
    """The latest fit of the model (this version and settings) trained as of `as_of_date` or
    before, as {as_of_date, run_id, training_fingerprint, metrics, artifact}; None without one.
    The artifact stays text until `unpickle_fit`: a fit about to be replaced is never unpickled."""
    if not warehouse.table_columns(TRAINED_MODELS.name):
        return None
    rows = warehouse.fetchall(
        f"select as_of_date, run_id, training_fingerprint, metrics, artifact from {qualified(TRAINED_MODELS.name)}"
        " where model_name = ? and model_version = ? and settings_digest = ? and as_of_date <= ?"
        " order by as_of_date desc, trained_at desc limit 1",
        (model_name, model_version, settings_digest, as_of_date),
    )
    if not rows:
        return None
    trained_as_of, run_id, fingerprint, metrics, artifact = rows[0]
    return {
        "as_of_date": as_date(trained_as_of),
        "run_id": run_id,
        "training_fingerprint": fingerprint,
        "metrics": json.loads(metrics),
        "artifact": artifact,
    }


def unpickle_fit(artifact: str) -> Any:
    """The fitted object of an ml.trained_models artifact (base64 of zlib-compressed pickle)."""
    import base64
    import pickle
    import zlib

    return pickle.loads(zlib.decompress(base64.b64decode(artifact)))


def fit_row(model_name: str, settings_digest: str, fingerprint: str, metrics: Mapping[str, Any], fitted: Any) -> "pd.DataFrame":
    """An ml.trained_models row (without stamps) for a new fit."""
    import base64
    import pickle
    import zlib

    import pandas as pd

    artifact = base64.b64encode(zlib.compress(pickle.dumps(fitted, protocol=pickle.HIGHEST_PROTOCOL), 6)).decode("ascii")
    return pd.DataFrame([{
        "model_name": model_name,
        "settings_digest": settings_digest,
        "training_fingerprint": fingerprint,
        "metrics": json.dumps(metrics, sort_keys=True, default=str),
        "artifact": artifact,
        "artifact_bytes": len(artifact),
        "trained_at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
    }])


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


def as_date(value: Any) -> dt.date:
    """A date column's value as a date, whatever the engine's driver returned (date, timestamp, text)."""
    return value if isinstance(value, dt.date) and not isinstance(value, dt.datetime) else dt.date.fromisoformat(str(value)[:10])


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
            # Converted once and repeated within Arrow: per row, the three took 5.4 s at 10.5M rows.
            arrays[column] = pa.repeat(_arrow_array(table.name, column, [stamps[column]], kind)[0], len(frame))
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
        if kind == "string" and _held_as_text(series):
            # Converted within Arrow, not through a Python object per row: 10.5M offers at a million
            # customers took 18.9 s and raised the task's memory by 2.5 GB that way.
            return pa.array(series, from_pandas=True).cast(pa.string())
        if kind == "date":
            series = pd.to_datetime(series).dt.date
        elif kind == "timestamp":
            series = pd.to_datetime(series)
        elif kind == "decimal":
            kind = "double"
        return pa.array(series.astype(object).where(series.notna(), None), type=pa.type_for_alias(_ARROW_TYPES[kind]), from_pandas=True)
    except (TypeError, ValueError, pa.ArrowException) as error:
        raise ValueError(f"{table}.{column}: values do not fit the declared type {kind} ({error})") from error


def _held_as_text(series: "pd.Series") -> bool:
    """Whether pandas holds `series` as text: its string dtype, or categories of it."""
    import pandas as pd

    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        dtype = dtype.categories.dtype
    return isinstance(dtype, pd.StringDtype)


def record_run(warehouse: Warehouse, run: Mapping[str, Any]) -> None:
    """Append one ml.model_runs row (`parameters`, `metrics` and `phase_seconds` as JSON)."""
    import pandas as pd

    row = {
        **{column: run.get(column) for column in MODEL_RUNS.columns},
        "parameters": json.dumps(run.get("parameters", {}), sort_keys=True, default=str),
        "metrics": json.dumps(run.get("metrics", {}), sort_keys=True, default=str),
        "phase_seconds": json.dumps(run.get("phase_seconds", {})),
        "finished_at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
    }
    ensure_outputs(warehouse, [MODEL_RUNS])
    warehouse.append_arrow(MODEL_RUNS.name, to_arrow(MODEL_RUNS, pd.DataFrame([row]), {}))


def ensure_outputs(warehouse: Warehouse, tables: Sequence[OutputTable]) -> None:
    """Create every output table with its declared columns (and add a newly declared column), with
    an index on as_of_date where the engine keeps one (PostgreSQL): a run replaces one date's rows,
    and BI's `_latest` views read the newest date. Without it each scanned every date held: at 21
    dates of a million rows (4.1 GB), deleting a date took 2.8 s, max(as_of_date) 1.7 s and a
    `_latest` view's rows of one customer 3.4 s; with it (139 MB) 0.0, 0.0 and 0.2 s, and inserting
    the date's million rows 5.2 s instead of 3.7-4.5."""
    for table in tables:
        warehouse.ensure_table(table.name, table.all_columns)
        warehouse.ensure_index(table.name, ["as_of_date"])


def publish(
    warehouse: Warehouse,
    outputs: Sequence[OutputTable],
    results: Mapping[str, "pd.DataFrame"],
    as_of_date: dt.date,
    run_id: str,
    model_version: str,
    run: Mapping[str, Any],
    new_fit: "pd.DataFrame | None" = None,
) -> int:
    """Replace each output's rows for `as_of_date` by `results` and record the run (and store a
    new fit, replacing the model's fit of the same date), in one transaction. Returns the rows written."""
    stamps = {"as_of_date": as_of_date, "run_id": run_id, "model_version": model_version}
    data = {table.name: to_arrow(table, results[table.name], stamps) for table in outputs}
    # Created before the transaction (record_run's too), so that a first run's lock on creating
    # them is not held while it writes.
    ensure_outputs(warehouse, [*outputs, MODEL_RUNS, *([TRAINED_MODELS] if new_fit is not None else [])])
    written = 0
    with warehouse.transaction():
        for table in outputs:
            written += warehouse.replace_rows(table.name, {"as_of_date": as_of_date}, data[table.name])
        if new_fit is not None:
            warehouse.replace_rows(
                TRAINED_MODELS.name,
                {"as_of_date": as_of_date, "model_name": new_fit["model_name"].iloc[0]},
                to_arrow(TRAINED_MODELS, new_fit, stamps),
            )
        record_run(warehouse, {**run, "rows_out": written})
        thin_history(warehouse, [table for table in outputs if table.thinned_history], run["model_name"], as_of_date)
    return written


def thin_history(warehouse: Warehouse, tables: Sequence[OutputTable], model_name: str, as_of_date: dt.date) -> int:
    """Delete from `tables` (one model's outputs) the as-of dates the history policy (from the
    environment) no longer keeps on `as_of_date`; returns the rows deleted. The dates are read off
    ml.model_runs, not the tables (listing them there reads every row's date, or index entry): those
    whose latest publishing run published rows (an insufficient_data run replaced them by none). A
    date dropped on an earlier day is listed again, and deletes nothing."""
    if not tables:
        return 0
    policy = HistoryPolicy.from_environ()
    latest_status = {
        as_date(day): status
        for day, status in warehouse.fetchall(
            f"select as_of_date, status from {qualified(MODEL_RUNS.name)} where model_name = ? and status in (?, ?)"
            " order by finished_at",
            (model_name, PUBLISHED, INSUFFICIENT_DATA),
        )
    }
    dropped = policy.dates_to_drop([day for day, status in latest_status.items() if status == PUBLISHED], as_of_date)
    if not dropped:
        return 0
    dates = ", ".join("?" for _ in dropped)
    deleted = sum(warehouse.delete_rows(table.name, f"as_of_date in ({dates})", tuple(dropped)) for table in tables)
    if deleted:
        log.info("%s: deleted %s rows of as-of dates from %s to %s (%s)", model_name, deleted, dropped[0], dropped[-1], policy)
    return deleted


def latest_tables(tables: Sequence[OutputTable]) -> list[OutputTable]:
    """The tables with a `<table>_latest` view: every output, and the run and quality tables."""
    from ml_tasks.performance import MODEL_PERFORMANCE

    return [*tables, MODEL_RUNS, MODEL_PERFORMANCE]


def publish_latest_views(warehouse: Warehouse, tables: Sequence[OutputTable], views: Mapping[str, str] | None = None) -> None:
    """`<table>_latest` views (the rows of each table's newest as-of date) of `latest_tables(tables)`,
    which must exist (`ensure_outputs`), then the `views` (name -> select over those)."""
    with warehouse.transaction():
        for table in latest_tables(tables):
            name = qualified(table.name)
            warehouse.execute(
                f"create or replace view {name}_latest as select * from {name}"
                f" where as_of_date = (select max(as_of_date) from {name})"
            )
        for view, select in (views or {}).items():
            warehouse.execute(f"create or replace view {qualified(view)} as {select}")
