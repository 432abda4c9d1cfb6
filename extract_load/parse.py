"""Turn deliveries (CSV files, JSON-lines files, or rows read from a SQL table) into typed
Arrow rows that meet the source contract, and rejects that do not.

DuckDB, in memory, is the parser for every format: its CSV reader keeps each broken line
(column count, bad bytes) with its line number, and one SQL step casts every column to its
contract type, so a wrong type or a missing key is caught the same way for every format.
Many files are parsed in one pass: a daily drop is small, and a first load reads years of them.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from extract_load.contract import Entity
from warehouse.adapter import duckdb_connection, quote_identifier, sql_type

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reject:
    source_file: str
    source_row: int  # the line number for files, the row read for SQL
    raw_text: str  # decoded; a byte the encoding cannot read shows as U+FFFD
    reason: str
    # A file's record exactly as delivered (line end left out); a SQL row's values as the source
    # gave them, in one byte string (encode_sql_row).
    raw_bytes: bytes | None = None


@dataclass(frozen=True)
class FileDrop:
    path: Path
    name: str  # relative to the source folder, as the load log and raw rows name it
    drop_date: dt.date
    size: int
    modified_ns: int
    sha256: str


@dataclass
class ParsedDelivery:
    rows: "pa.Table"  # contract columns, extra columns, _delivery_date, _source_file, _source_row, _version_hash
    rejects: list[Reject]
    extra_columns: list[str]
    files: list[FileDrop] = field(default_factory=list)

    @property
    def rows_read(self) -> int:
        return self.rows.num_rows + len(self.rejects)

    def rows_read_per_file(self) -> Counter:
        import pyarrow.compute as pc

        counts = Counter(reject.source_file for reject in self.rejects)
        for entry in pc.value_counts(self.rows.column("_source_file")).to_pylist():
            counts[entry["values"]] += entry["counts"]
        return counts


class DeliveryError(ValueError):
    """A whole delivery breaks the contract (e.g. a required column is missing)."""


def _check_columns(source: str, entity: Entity, present: Sequence[str]) -> None:
    """A delivery must have every required column, and names that are safe in SQL."""
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
    rejects: list[Reject],
    raw_text: str = "_raw_text",
) -> ParsedDelivery:
    """Cast the all-text relation `incoming` (with _source_file, _delivery_date and _source_row)
    to contract types; rows that fail go to rejects, with their `raw_text` (an SQL expression,
    worked out for rejected rows only)."""
    import pyarrow.compute as pc

    extra = [name for name in present if name not in entity.column_types]
    selects, failures = [], {}  # failures: condition -> message, both SQL
    for name, column_type in entity.column_types.items():
        target = sql_type("duckdb", column_type)
        if name not in present:
            selects.append(f"cast(null as {target}) as {name}")
            continue
        cast = _cast(name, column_type)
        selects.append(f"{cast} as {name}")
        failures[f"{name} is not null and {cast} is null"] = (
            f"'{name}: expected {column_type}, got ' || left(cast({name} as varchar), 60)"
        )
    for name in entity.primary_key:
        failures[f"{name} is null or trim(cast({name} as varchar)) = ''"] = f"'missing key {name}'"
    # Messages are built for failing rows only; a good row costs the conditions alone.
    reason = (
        f"case when ({') or ('.join(failures)}) then concat_ws('; ', "
        + ", ".join(f"case when {condition} then {message} end" for condition, message in failures.items())
        + ") else '' end"
    )
    selects += [f"cast({name} as varchar) as {name}" for name in extra]
    columns = [*entity.column_types, *extra]
    # One pass casts and checks every row; the few rejects are then looked up again for their
    # raw text, so no row is cast twice.
    checked = con.sql(
        f"select {', '.join(columns)}, cast(_delivery_date as date) as _delivery_date, _source_file, _source_row, "
        f"{_version_hash(entity)} as _version_hash, _reason from (select _source_file, _delivery_date, _source_row, "
        f"{reason} as _reason, {', '.join(selects)} from {incoming}) as typed"
    ).to_arrow_table()
    is_good = pc.equal(checked.column("_reason"), "")
    failed = checked.filter(pc.invert(is_good)).select(["_source_file", "_source_row", "_reason"])
    if failed.num_rows:
        con.register("failed", failed)
        for source_file, row, raw, reason in con.execute(
            f"select _source_file, _source_row, {raw_text}, failed._reason"
            f" from failed join {incoming} using (_source_file, _source_row)"
        ).fetchall():
            rejects.append(Reject(source_file, int(row), raw, f"breaks the contract: {reason}"))
    rejects.sort(key=lambda reject: (reject.source_file, reject.source_row))
    return ParsedDelivery(rows=checked.filter(is_good).drop_columns(["_reason"]), rejects=rejects, extra_columns=extra)


def _version_hash(entity: Entity) -> str:
    """SQL for a digest of a row's contract values once typed, the same whichever format or
    engine delivered them: raw keeps a version of a record once, by its key and this digest.
    Columns a source adds beyond the contract are loaded but do not make a new version."""
    values = ", ".join(f"coalesce(cast({name} as varchar), chr(0))" for name in entity.column_types)
    return f"md5(concat_ws(chr(31), {values}))"


def parse_csv_files(drops: Sequence[FileDrop], entity: Entity) -> ParsedDelivery:
    """Parse CSV drops that share one header in a single read."""
    all_drops = list(drops)
    payloads = [drop.path.read_bytes() for drop in drops]
    rejects: list[Reject] = []
    encoding = entity.system.encoding
    if encoding != "utf-8":  # DuckDB reads UTF-8: it is given the files re-encoded
        payloads = [_as_utf8(drop, payload, encoding, rejects) for drop, payload in zip(drops, payloads)]
    # An empty export (0 bytes, or nothing but a byte order mark or blank lines) is a delivery with
    # no rows, as a header-only file is: tools write one on a day without changes. It is logged as
    # loaded (its audit counts the file and no rows), never a missing-column failure.
    if not all(payload.removeprefix(UTF8_BOM).strip() for payload in payloads):
        empty = [drop.name for drop, payload in zip(drops, payloads) if not payload.removeprefix(UTF8_BOM).strip()]
        log.info("%s: empty, a delivery with no rows", ", ".join(empty))
        kept = [(drop, payload) for drop, payload in zip(drops, payloads) if payload.removeprefix(UTF8_BOM).strip()]
        if not kept:
            return _empty_delivery(all_drops, entity, rejects)
        drops, payloads = [drop for drop, _ in kept], [payload for _, payload in kept]
    present = _csv_header(payloads[0])
    for drop, payload in zip(drops, payloads):
        _check_columns(drop.name, entity, _csv_header(payload))
    with tempfile.TemporaryDirectory(prefix="crmw-utf8-") as utf8_folder:
        read_paths = [str(drop.path) for drop in drops]
        if encoding != "utf-8":
            read_paths = [str(Path(utf8_folder) / f"{number}.csv") for number in range(len(drops))]
            for read_path, payload in zip(read_paths, payloads):
                Path(read_path).write_bytes(payload)
        delivery = _parse_csv(drops, payloads, read_paths, present, entity, rejects)
    delivery.files = all_drops
    return delivery


def _parse_csv(
    drops: Sequence[FileDrop],
    payloads: Sequence[bytes],
    read_paths: Sequence[str],
    present: Sequence[str],
    entity: Entity,
    rejects: list[Reject],
) -> ParsedDelivery:
    """Read the CSV files at `read_paths` (UTF-8, one header) with DuckDB and split their rows."""
    import pyarrow as pa

    con = duckdb_connection()
    try:
        spec = "{" + ", ".join(f"'{name}': 'VARCHAR'" for name in present) + "}"
        con.execute(
            "create temp table parsed as select row_number() over () as _record, filename as _path, "
            f"concat_ws(',', {', '.join(present)}) as _raw_text, {', '.join(present)} "
            f"from read_csv(?, header = true, auto_detect = false, columns = {spec}, "
            "store_rejects = true, parallel = false, filename = true)",
            [list(read_paths)],
        )
        failed = con.execute(
            "select scans.file_path, errors.line, any_value(errors.csv_line), string_agg(distinct errors.error_type, ', '),"
            " string_agg(distinct errors.error_message, '; ') from reject_errors as errors"
            " join reject_scans as scans using (scan_id, file_id) group by 1, 2"
        ).fetchall()
        parsed_per_file = dict(con.execute("select _path, count(*) from parsed group by 1").fetchall())
        # DuckDB numbers the lines it reads (header, records, blank lines) and gives rejects that
        # number; rows read fine are told by their place among the file's lines DuckDB kept.
        columns: dict[str, list] = {"_line": [], "_text": [], "_source_file": [], "_delivery_date": []}
        numbered_by_line = []  # the drops whose rows are told by their file line
        for drop, payload, read_path in zip(drops, payloads, read_paths):
            lines = _csv_lines(payload)
            rejected = {int(line) for path, line, *_ in failed if path == read_path}
            good = [n for n in range(2, len(lines) + 1) if lines[n - 1][1] and n not in rejected]
            parsed = parsed_per_file.get(read_path, 0)
            if len(good) != parsed:  # the reader and the scan disagree: keep DuckDB's numbers
                log.warning("%s: cannot match rows to file lines; source_row counts rows read", drop.name)
                good, lines = list(range(1, parsed + 1)), [(n, None) for n in range(1, parsed + 2)]
            else:
                numbered_by_line.append(drop)
            columns["_line"] += [lines[n - 1][0] for n in good]
            columns["_text"] += [lines[n - 1][1] for n in good]
            columns["_source_file"] += [drop.name] * len(good)
            columns["_delivery_date"] += [drop.drop_date] * len(good)
            for path, line, raw, kind, message in failed:
                if path == read_path:
                    number, text = lines[int(line) - 1] if 0 < int(line) <= len(lines) else (int(line), None)
                    rejects.append(Reject(drop.name, number, text or raw or "", f"unreadable line: {kind.lower()} ({message})"))
        numbers = pa.array(range(1, len(columns["_line"]) + 1), pa.int64())
        con.register("file_lines", pa.table({"_record": numbers, **columns}))
        con.execute(
            "create temp table incoming as select _source_file, _delivery_date, _line as _source_row,"
            f" coalesce(_text, _raw_text) as _raw_text, {', '.join(f'parsed.{name}' for name in present)}"
            " from parsed join file_lines using (_record)"
        )
        delivery = _typed_split(con, "incoming", entity, present, rejects)
        delivery.rejects = _with_original_bytes(delivery.rejects, numbered_by_line, _csv_records)
        return delivery
    finally:
        con.close()


def _as_utf8(drop: FileDrop, payload: bytes, encoding: str, rejects: list[Reject]) -> bytes:
    """The file re-encoded as UTF-8, line for line: a line the encoding cannot read goes to rejects
    and is left blank, so every other line keeps its number."""
    lines = _decoded_lines(drop, payload, encoding, rejects)
    return "\n".join("" if text is None else text for _, text in lines).encode("utf-8")


def _empty_delivery(drops: Sequence[FileDrop], entity: Entity, rejects: list[Reject]) -> ParsedDelivery:
    """No rows, with the contract's columns: what a run of empty files delivers (and `rejects`,
    lines of them the encoding could not read)."""
    con = duckdb_connection()
    try:
        columns = ", ".join(f"cast(null as varchar) as {name}" for name in entity.column_types)
        con.execute(
            "create temp table incoming as select cast(null as varchar) as _source_file, cast(null as date) as _delivery_date,"
            f" cast(null as bigint) as _source_row, cast(null as varchar) as _raw_text, {columns} limit 0"
        )
        delivery = _typed_split(con, "incoming", entity, list(entity.column_types), rejects)
        delivery.files = list(drops)
        return delivery
    finally:
        con.close()


def csv_header(path: Path) -> list[str]:
    with path.open("rb") as handle:
        return _csv_header(handle.readline())


# The byte order mark Excel's "CSV UTF-8" and other exports put before the first line: invisible in
# an editor, it would make the first column's name differ from the contract's.
UTF8_BOM = b"\xef\xbb\xbf"


def _csv_header(payload: bytes) -> list[str]:
    header = payload.split(b"\n", 1)[0].removeprefix(UTF8_BOM).decode("utf-8", errors="replace").strip().split(",")
    return [name.strip().strip('"') for name in header if name.strip()]


def _csv_lines(payload: bytes) -> list[tuple[int, str | None]]:
    """The lines as DuckDB's CSV reader counts them (the header, each record, each blank line;
    a record whose quoted field holds line breaks counts once): for each, the file line it
    starts on and its text, None for a blank line."""
    result = []
    for number, parts in _csv_record_lines(payload):
        text = b"\n".join(part.removesuffix(b"\r") for part in parts)
        result.append((number, text.decode("utf-8", errors="replace") if text.strip() else None))
    return result


def _csv_records(payload: bytes) -> list[tuple[int, bytes]]:
    """Each CSV record with the file line it starts on, as the file's bytes."""
    return [(number, b"\n".join(parts)) for number, parts in _csv_record_lines(payload)]


def _csv_record_lines(payload: bytes) -> list[tuple[int, list[bytes]]]:
    """Each CSV record's lines (a quoted field may hold line breaks), with the file line it starts on."""
    counted: list[tuple[int, list[bytes]]] = []
    in_quotes = False
    for number, text in enumerate(payload.split(b"\n"), start=1):
        if in_quotes:
            counted[-1][1].append(text)
        else:
            counted.append((number, [text]))
        if text.count(b'"') % 2:
            in_quotes = not in_quotes
    return counted


def _jsonl_records(payload: bytes) -> list[tuple[int, bytes]]:
    return list(enumerate(payload.removeprefix(UTF8_BOM).split(b"\n"), start=1))


def _with_original_bytes(
    rejects: list[Reject], drops: Sequence[FileDrop], records: Callable[[bytes], Iterable[tuple[int, bytes]]]
) -> list[Reject]:
    """The rejects, each with its record's bytes as the file holds them: quarantine keeps what was
    delivered even where the decoded text lost it. Only files with rejects are read again."""
    missing = {reject.source_file for reject in rejects if reject.raw_bytes is None}
    by_line = {drop.name: dict(records(drop.path.read_bytes())) for drop in drops if drop.name in missing}
    return [
        replace(reject, raw_bytes=by_line[reject.source_file].get(reject.source_row))
        if reject.raw_bytes is None and reject.source_file in by_line
        else reject
        for reject in rejects
    ]


def parse_jsonl_files(drops: Sequence[FileDrop], entity: Entity) -> ParsedDelivery:
    """Parse JSON-lines drops in one pass; DuckDB's JSON functions take each line apart."""
    import pyarrow as pa

    rejects: list[Reject] = []
    lines: dict[str, list] = {"_source_file": [], "_delivery_date": [], "_source_row": [], "_raw_text": []}
    for drop in drops:
        decoded = _decoded_lines(drop, drop.path.read_bytes(), entity.system.encoding, rejects)
        numbered = [(number, text) for number, text in decoded if text is not None and text.strip()]
        lines["_source_file"] += [drop.name] * len(numbered)
        lines["_delivery_date"] += [drop.drop_date] * len(numbered)
        lines["_source_row"] += [number for number, _ in numbered]
        lines["_raw_text"] += [text for _, text in numbered]
    con = duckdb_connection()
    try:
        types = {"_source_file": pa.string(), "_delivery_date": pa.date32(), "_source_row": pa.int64(), "_raw_text": pa.string()}
        con.register("file_lines", pa.table({name: pa.array(lines[name], types[name]) for name in lines}))
        con.execute("create temp table objects as select * from file_lines where json_valid(_raw_text)")
        for source_file, number, text in con.execute(
            "select _source_file, _source_row, _raw_text from file_lines where not json_valid(_raw_text)"
        ).fetchall():
            rejects.append(Reject(source_file, number, text, f"unreadable line: invalid JSON ({_json_error(text)})"))
        for source_file, number, text in con.execute(
            "select _source_file, _source_row, _raw_text from objects where json_type(_raw_text) <> 'OBJECT'"
        ).fetchall():
            rejects.append(Reject(source_file, number, text, "unreadable line: expected a JSON object"))
        con.execute("delete from objects where json_type(_raw_text) <> 'OBJECT'")
        seen: set[str] = set()
        for source_file, keys in con.execute(
            "select _source_file, list(distinct key order by key) from"
            " (select _source_file, unnest(json_keys(_raw_text)) as key from objects) group by 1"
        ).fetchall():
            _check_columns(source_file, entity, keys)
            seen.update(keys)
        present = [*entity.column_types, *sorted(key for key in seen if key not in entity.column_types)]
        # One parse per line into text fields (nested values come back as JSON text).
        structure = json.dumps({name: "VARCHAR" for name in present})
        con.execute(
            "create temp table fields as select _source_file, _delivery_date, _source_row, _raw_text,"
            f" json_transform(_raw_text, '{structure}') as _fields from objects"
        )
        values = ", ".join(f"_fields.{name} as {name}" for name in present)
        con.execute(f"create temp view incoming as select _source_file, _delivery_date, _source_row, _raw_text, {values} from fields")
        delivery = _typed_split(con, "incoming", entity, present, rejects)
        delivery.files = list(drops)
        delivery.rejects = _with_original_bytes(delivery.rejects, drops, _jsonl_records)
        return delivery
    finally:
        con.close()


def _decoded_lines(drop: FileDrop, payload: bytes, encoding: str, rejects: list[Reject]) -> list[tuple[int, str | None]]:
    """The file's lines with their numbers, decoded (a leading UTF-8 byte order mark dropped); a
    line the encoding cannot read goes to rejects, with its bytes, and is None here."""
    payload = payload.removeprefix(UTF8_BOM)
    try:
        return list(enumerate(payload.decode(encoding).split("\n"), start=1))
    except UnicodeDecodeError:  # find the bad lines one by one
        lines: list[tuple[int, str | None]] = []
        for number, raw in enumerate(payload.split(b"\n"), start=1):
            try:
                lines.append((number, raw.decode(encoding)))
            except UnicodeDecodeError as error:
                reason = f"unreadable line: not {encoding} ({error.reason} at byte {error.start})"
                rejects.append(Reject(drop.name, number, raw.decode(encoding, errors="replace"), reason, raw))
                lines.append((number, None))
        return lines


def _json_error(text: str) -> str:
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        return f"{error.msg} at column {error.colno}"
    return "not accepted by the JSON reader"


def parse_table(
    table: "pa.Table", source: str, delivery_date: dt.date, entity: Entity, first_row: int = 1
) -> ParsedDelivery:
    """Rows read from a SQL source as text columns, numbered from `first_row`; checked like file
    rows. A rejected row keeps its values as JSON (raw text) and, losslessly, each value's bytes as
    the source gave them (raw bytes, encode_sql_row): a row holding text that is not UTF-8 (e.g.
    Latin-1 bytes in a SQLite TEXT value, a binary BLOB) is rejected: neither engine stores it as text."""
    import numpy as np
    import pyarrow as pa

    names = table.column_names
    _check_columns(source, entity, names)
    rows = table.num_rows
    # The text as bytes, Arrow not checking that a driver's text is UTF-8 (a driver types a column
    # of nulls only as it likes, e.g. SQLite's as integers).
    values = pa.table({name: table.column(name).cast(pa.string()).cast(pa.binary()) for name in names})
    rejects = _rows_not_utf8(values, source, first_row)
    table = table.add_column(0, "_source_row", pa.array(np.arange(first_row, first_row + rows, dtype=np.int64)))
    table = table.add_column(0, "_delivery_date", pa.repeat(pa.scalar(delivery_date, pa.date32()), rows))
    table = table.add_column(0, "_source_file", pa.repeat(pa.scalar(source, pa.string()), rows))
    if rejects:
        unreadable = np.zeros(rows, dtype=bool)
        unreadable[[reject.source_row - first_row for reject in rejects]] = True
        table = table.filter(pa.array(~unreadable))
    con = duckdb_connection()
    try:
        con.register("incoming", table)
        raw_text = f"to_json(struct_pack({', '.join(f'{name} := incoming.{name}' for name in names)}))"
        delivery = _typed_split(con, "incoming", entity, names, rejects, raw_text)
    finally:
        con.close()
    delivery.rejects = [
        reject if reject.raw_bytes is not None
        else replace(reject, raw_bytes=encode_sql_row(values.slice(reject.source_row - first_row, 1).to_pylist()[0]))
        for reject in delivery.rejects
    ]
    return delivery


def _rows_not_utf8(values: "pa.Table", source: str, first_row: int) -> list[Reject]:
    """A reject for each row (numbered from `first_row`) with a value that is not UTF-8 text; its raw
    text shows each byte UTF-8 cannot read as U+FFFD."""
    rejects: dict[int, Reject] = {}
    for name in values.column_names:
        try:
            values.column(name).cast("string").validate(full=True)
        except ValueError:  # pyarrow's ArrowInvalid: find its rows one by one
            for index, value in enumerate(values.column(name).to_pylist()):
                if index in rejects or value is None:
                    continue
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError as error:
                    row = values.slice(index, 1).to_pylist()[0]
                    text = {column: None if raw is None else raw.decode("utf-8", errors="replace") for column, raw in row.items()}
                    rejects[index] = Reject(
                        source,
                        first_row + index,
                        json.dumps(text, ensure_ascii=False, separators=(",", ":")),
                        f"unreadable value: {name} is not utf-8 text ({error.reason} at byte {error.start})",
                        encode_sql_row(row),
                    )
    return [rejects[index] for index in sorted(rejects)]


def encode_sql_row(values: Mapping[str, bytes | None]) -> bytes:
    """A row read from a SQL source as one byte string that keeps it exactly: a JSON object of
    column -> base64 of the value's bytes as the source gave them (text as stored, a BLOB's bytes),
    or null for NULL. decode_sql_row turns it back."""
    encoded = {name: None if value is None else base64.b64encode(value).decode("ascii") for name, value in values.items()}
    return json.dumps(encoded, separators=(",", ":")).encode("ascii")


def decode_sql_row(row_bytes: bytes) -> dict[str, bytes | None]:
    """The values of a SQL row kept by encode_sql_row: column -> the value's bytes, or None for NULL.
    For a quarantined row: decode_sql_row(base64.b64decode(raw_bytes_base64))."""
    return {name: None if value is None else base64.b64decode(value) for name, value in json.loads(row_bytes).items()}


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
