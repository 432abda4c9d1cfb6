"""Turn one delivery (a CSV file, a JSON-lines file, or rows read from a SQL table) into typed
Arrow rows that meet the source contract, and rejects that do not.

DuckDB, in memory, is the parser for every format: its CSV reader keeps each broken line
(column count, bad bytes) with its line number, and one SQL step casts every column to its
contract type, so a wrong type or a missing key is caught the same way for every format.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from extract_load.contract import Entity
from warehouse.adapter import quote_identifier, sql_type

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

log = logging.getLogger(__name__)

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


def _cast(name: str, column_type: str) -> str:
    """SQL casting the text column `name` to its contract type; NULL when the text is not one.
    try_cast alone reads '1.5' as the integer 2 (and '1e3' or '0x10' as integers): an integer
    must be written as a whole number."""
    cast = f"try_cast({name} as {sql_type('duckdb', column_type)})"
    if column_type == "integer":
        return rf"case when regexp_full_match({name}, '\s*[+-]?[0-9]+(\.0*)?\s*') then {cast} end"
    return cast


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
        cast = _cast(name, column_type)
        selects.append(f"{cast} as {name}")
        checks.append(
            f"case when {name} is not null and {cast} is null"
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
        f"select {', '.join(columns)}, ?::date as _delivery_date, ? as _source_file, _source_row, "
        f"{_version_hash(entity)} as _version_hash from checked where _reason = '' order by _source_row",
        params=[delivery_date, source],
    ).to_arrow_table()
    for row, raw, reason in con.execute(
        "select _source_row, _raw_text, _reason from checked where _reason <> '' order by _source_row"
    ).fetchall():
        rejects.append((int(row), raw, f"breaks the contract: {reason}"))
    return ParsedDelivery(source=source, rows=rows, rejects=sorted(rejects), extra_columns=extra)


def _version_hash(entity: Entity) -> str:
    """SQL for a digest of a row's contract values once typed, the same whichever format or
    engine delivered them: raw keeps a version of a record once, by its key and this digest.
    Columns a source adds beyond the contract are loaded but do not make a new version."""
    values = ", ".join(f"coalesce(cast({name} as varchar), chr(0))" for name in entity.column_types)
    return f"md5(concat_ws(chr(31), {values}))"


def parse_csv(path: Path, source: str, delivery_date: dt.date, entity: Entity) -> ParsedDelivery:
    import duckdb
    import pyarrow as pa

    payload = path.read_bytes()
    header = payload.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip().split(",")
    present = [name.strip().strip('"') for name in header if name.strip()]
    _check_columns(source, entity, present)
    con = duckdb.connect()
    try:
        spec = "{" + ", ".join(f"'{name}': 'VARCHAR'" for name in present) + "}"
        con.execute(
            "create temp table parsed as select row_number() over () as _record, "
            f"concat_ws(',', {', '.join(present)}) as _raw_text, * "
            f"from read_csv(?, header = true, auto_detect = false, columns = {spec}, "
            "store_rejects = true, parallel = false)",
            [str(path)],
        )
        failed = con.execute(
            "select line, any_value(csv_line), string_agg(distinct error_type, ', '), "
            "string_agg(distinct error_message, '; ') from reject_errors group by line"
        ).fetchall()
        ((parsed,),) = con.execute("select count(*) from parsed").fetchall()
        # DuckDB numbers the lines it reads (header, records, blank lines) and gives rejects that
        # number; rows read fine get it too, then everything is told by its line in the file.
        lines = _csv_lines(payload)
        rejected = {int(line) for line, *_ in failed}
        good = [n for n in range(2, len(lines) + 1) if lines[n - 1][1] and n not in rejected]
        if len(good) != parsed:  # the reader and the scan disagree: keep DuckDB's numbers
            log.warning("%s: cannot match rows to file lines; source_row counts rows read", source)
            good, lines = list(range(1, parsed + 1)), [(n, None) for n in range(1, parsed + 2)]
        con.register(
            "file_lines",
            pa.table(
                {
                    "_record": pa.array(range(1, parsed + 1), pa.int64()),
                    "_line": pa.array([lines[n - 1][0] for n in good], pa.int64()),
                    "_text": pa.array([lines[n - 1][1] for n in good], pa.string()),
                }
            ),
        )
        con.execute(
            "create temp table incoming as select _line as _source_row, coalesce(_text, _raw_text) as _raw_text, "
            f"{', '.join(f'parsed.{name}' for name in present)} from parsed join file_lines using (_record)"
        )
        rejects = []
        for line, raw, kind, message in failed:
            number, text = lines[int(line) - 1] if 0 < int(line) <= len(lines) else (int(line), None)
            rejects.append((number, text or raw or "", f"unreadable line: {kind.lower()} ({message})"))
        return _typed_split(con, "incoming", entity, present, source, delivery_date, rejects)
    finally:
        con.close()


def _csv_lines(payload: bytes) -> list[tuple[int, str | None]]:
    """The lines as DuckDB's CSV reader counts them (the header, each record, each blank line;
    a record whose quoted field holds line breaks counts once): for each, the file line it
    starts on and its text, None for a blank line."""
    counted: list[tuple[int, list[bytes]]] = []
    in_quotes = False
    for number, text in enumerate(payload.split(b"\n"), start=1):
        if in_quotes:
            counted[-1][1].append(text)
        else:
            counted.append((number, [text]))
        if text.count(b'"') % 2:
            in_quotes = not in_quotes
    result = []
    for number, parts in counted:
        text = b"\n".join(part.removesuffix(b"\r") for part in parts)
        result.append((number, text.decode("utf-8", errors="replace") if text.strip() else None))
    return result


def parse_jsonl(path: Path, source: str, delivery_date: dt.date, entity: Entity) -> ParsedDelivery:
    import pyarrow as pa

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
    columns = {
        "_source_row": pa.array([number for number, _, _ in records], pa.int64()),
        "_raw_text": pa.array([text for _, text, _ in records], pa.string()),
        **{name: text_array([record.get(name) for _, _, record in records]) for name in present},
    }
    return _check_table(pa.table(columns), present, source, delivery_date, entity, rejects)


def parse_table(
    table: "pa.Table", source: str, delivery_date: dt.date, entity: Entity, first_row: int = 1
) -> ParsedDelivery:
    """Rows read from a SQL source as text columns (see `text_array`), numbered from `first_row`;
    checked like file rows, the raw text of a rejected row being its values as JSON."""
    import pyarrow as pa

    names = table.column_names
    numbers = pa.array(range(first_row, first_row + table.num_rows), pa.int64())
    return _check_table(table.add_column(0, "_source_row", numbers), names, source, delivery_date, entity, [])


def _check_table(
    table: "pa.Table", names: list[str], source: str, delivery_date: dt.date, entity: Entity, rejects: list[Reject]
) -> ParsedDelivery:
    import duckdb

    con = duckdb.connect()
    try:
        con.register("incoming_text", table)
        raw_text = "_raw_text"
        if raw_text not in table.column_names:
            raw_text = f"to_json(struct_pack({', '.join(f'{name} := {name}' for name in names)})) as _raw_text"
        con.execute(f"create temp view incoming as select *, {raw_text} from incoming_text")
        return _typed_split(con, "incoming", entity, names, source, delivery_date, rejects)
    finally:
        con.close()


def text_array(values: list[Any]) -> "pa.Array":
    """Source values of one column as Arrow text: cast by Arrow when they share a type (fast),
    value by value when a column mixes types, as dirty sources do."""
    import pyarrow as pa

    try:
        return pa.array(values).cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return pa.array([_as_text(value) for value in values], pa.string())


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
