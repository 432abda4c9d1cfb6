"""Turn one delivery (a CSV file, a JSON-lines file, or rows read from a SQL table) into typed
Arrow rows that meet the source contract, and rejects that do not.

DuckDB, in memory, is the parser for every format: its CSV reader keeps each broken line
(column count, bad bytes) with its line number, and one SQL step casts every column to its
contract type, so a wrong type or a missing key is caught the same way for every format.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from extract_load.contract import Entity
from warehouse.adapter import quote_identifier, sql_type

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

Reject = tuple[int, str, str]  # source row (line number for files), raw text, reason


@dataclass
class ParsedDelivery:
    source: str
    rows: "pa.Table"
    rejects: list[Reject]
    extra_columns: list[str]
    file: tuple[str, int, str] | None = field(default=None)

    @property
    def rows_read(self) -> int:
        return self.rows.num_rows + len(self.rejects)


class DeliveryError(ValueError):
    """A whole delivery breaks the contract (e.g. a required column is missing)."""


def _check_columns(source: str, entity: Entity, present: Sequence[str]) -> list[str]:
    missing = [name for name in entity.required_columns if name not in present]
    if missing:
        raise DeliveryError(
            f"{source}: required column {missing[0]!r} of {entity.name} is missing"
            f" (found: {', '.join(present) or 'no columns'})"
        )
    for name in present:
        try:
            quote_identifier(name)
        except ValueError:
            raise DeliveryError(f"{source}: column name {name!r} is not lowercase snake_case") from None
    return [name for name in present if name not in entity.column_types]


def _typed_split(
    con: "duckdb.DuckDBPyConnection",
    incoming: str,
    entity: Entity,
    present: Sequence[str],
    source: str,
    delivery_date: dt.date,
    rejects: list[Reject],
) -> ParsedDelivery:
    """Cast the all-text relation `incoming` to contract types; rows that fail go to rejects."""
    extra = _check_columns(source, entity, present)
    selects, checks = [], []
    for name, column_type in entity.column_types.items():
        target = sql_type("duckdb", column_type)
        if name not in present:
            selects.append(f"cast(null as {target}) as {name}")
            continue
        selects.append(f"try_cast({name} as {target}) as {name}")
        checks.append(
            f"case when {name} is not null and try_cast({name} as {target}) is null"
            f" then '{name}: expected {column_type}, got ' || left(cast({name} as varchar), 60) end"
        )
    for name in entity.primary_key:
        checks.append(f"case when {name} is null or trim(cast({name} as varchar)) = '' then 'missing key {name}' end")
    selects += [f"cast({name} as varchar) as {name}" for name in extra]
    con.execute(
        f"create or replace temp table checked as select _source_row, _raw_text, "
        f"concat_ws('; ', {', '.join(checks) or 'null'}) as _reason, {', '.join(selects)} from {incoming}"
    )
    columns = [*entity.column_types, *extra]
    rows = con.sql(
        f"select {', '.join(columns)}, ?::date as _delivery_date, ? as _source_file, _source_row "
        "from checked where _reason = '' order by _source_row",
        params=[delivery_date, source],
    ).to_arrow_table()
    for row, raw, reason in con.execute(
        "select _source_row, _raw_text, _reason from checked where _reason <> '' order by _source_row"
    ).fetchall():
        rejects.append((int(row), raw, f"breaks the contract: {reason}"))
    return ParsedDelivery(source=source, rows=rows, rejects=sorted(rejects), extra_columns=extra)


def parse_csv(path: Path, source: str, delivery_date: dt.date, entity: Entity) -> ParsedDelivery:
    import duckdb

    with path.open("rb") as handle:
        header = handle.readline().decode("utf-8", errors="replace").strip().split(",")
    present = [name.strip().strip('"') for name in header if name.strip()]
    _check_columns(source, entity, present)
    con = duckdb.connect()
    try:
        spec = "{" + ", ".join(f"'{name}': 'VARCHAR'" for name in present) + "}"
        con.execute(
            "create temp table incoming as select row_number() over () as _source_row, "
            f"concat_ws(',', {', '.join(present)}) as _raw_text, * "
            f"from read_csv(?, header = true, auto_detect = false, columns = {spec}, "
            "store_rejects = true, parallel = false)",
            [str(path)],
        )
        rejects = [
            (int(line), raw or "", f"unreadable line: {kind.lower()} ({message})")
            for line, raw, kind, message in con.execute(
                "select line, any_value(csv_line), string_agg(distinct error_type, ', '), "
                "string_agg(distinct error_message, '; ') from reject_errors group by line"
            ).fetchall()
        ]
        return _typed_split(con, "incoming", entity, present, source, delivery_date, rejects)
    finally:
        con.close()


def parse_jsonl(path: Path, source: str, delivery_date: dt.date, entity: Entity) -> ParsedDelivery:
    rejects: list[Reject] = []
    records: list[tuple[int, str, dict[str, Any]]] = []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            rejects.append((number, raw.decode("utf-8", errors="replace"), f"unreadable line: not UTF-8 ({error.reason} at byte {error.start})"))
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            rejects.append((number, text, f"unreadable line: invalid JSON ({error.msg} at column {error.colno})"))
            continue
        if not isinstance(record, dict):
            rejects.append((number, text, "unreadable line: expected a JSON object"))
            continue
        records.append((number, text, record))
    seen = sorted({key for _, _, record in records for key in record})
    if records:
        _check_columns(source, entity, seen)
    present = [*entity.column_types, *(key for key in seen if key not in entity.column_types)]
    return _split_text_rows(
        [(number, text, [_as_text(record.get(name)) for name in present]) for number, text, record in records],
        present,
        source,
        delivery_date,
        entity,
        rejects,
    )


def parse_rows(
    rows: Sequence[Sequence[Any]], names: list[str], source: str, delivery_date: dt.date, entity: Entity
) -> ParsedDelivery:
    """Rows read from a SQL source, in `names` order; checked like file rows."""
    return _split_text_rows(
        [(number, None, [_as_text(value) for value in row]) for number, row in enumerate(rows, start=1)],
        names,
        source,
        delivery_date,
        entity,
        [],
    )


def _split_text_rows(
    rows: list[tuple[int, str | None, list[str | None]]],
    names: list[str],
    source: str,
    delivery_date: dt.date,
    entity: Entity,
    rejects: list[Reject],
) -> ParsedDelivery:
    import duckdb
    import pyarrow as pa

    columns = {
        "_source_row": pa.array([number for number, _, _ in rows], pa.int64()),
        "_raw_text": pa.array(
            [text if text is not None else json.dumps(dict(zip(names, values))) for _, text, values in rows], pa.string()
        ),
    }
    for index, name in enumerate(names):
        columns[name] = pa.array([values[index] for _, _, values in rows], pa.string())
    con = duckdb.connect()
    try:
        con.register("incoming", pa.table(columns))
        return _typed_split(con, "incoming", entity, names, source, delivery_date, rejects)
    finally:
        con.close()


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat(sep=" ") if isinstance(value, dt.datetime) else value.isoformat()
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)
