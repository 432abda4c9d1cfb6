"""Write one simulated day the way the real source systems deliver it, dirty data included.

- the sales database (SQLite file, or a PostgreSQL URL): rows inserted, updated in place, logged
  in order_status_history, test orders hard-deleted;
- the CRM: one CSV per entity dropped per day (crm/<date>/<entity>.csv);
- the service desk: one JSON-lines export per day (service/<date>/tickets.jsonl).

Each injected defect is listed with the handling the pipeline owes it (truth/defects.csv).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from simulator.engine import DayRecords, concat_rows, row_count

DEFECT_COLUMNS = ["date", "system", "entity", "record_key", "location", "defect", "handling"]

# Per entity: the defects a row can get (one at most, with probability = dirty rate).
CUSTOMER_DEFECTS = {
    "broken_column_count": "quarantine",
    "bad_bytes": "quarantine",
    "missing_key": "quarantine",
    "invalid_email": "flag",
    "invalid_phone": "flag",
    "missing_birth_date": "flag",
    "impossible_birth_date": "flag",
    "duplicate_person": "merge",
    "late_arriving": "load",
}
TICKET_DEFECTS = {"invalid_json": "quarantine", "missing_key": "quarantine", "wrong_type": "quarantine"}
LINE_DEFECTS = {
    "nonpositive_quantity": "flag",
    "nonpositive_price": "flag",
    "orphan_line": "flag",
    "wrong_type": "quarantine",
}
ORDER_DEFECTS = {"test_order_deleted": "delete", "late_arriving": "load"}

SALES_TABLES = {
    "products": ("sku", ["sku", "name", "category", "subcategory", "list_price", "unit_cost", "updated_at"]),
    "orders": ("order_id", ["order_id", "customer_email", "crm_id", "channel", "store_id", "status", "created_at", "updated_at"]),
    "order_lines": ("order_id, line_number", ["order_id", "line_number", "sku", "quantity", "unit_price", "discount", "updated_at"]),
    "payments": ("payment_id", ["payment_id", "order_id", "method", "amount", "paid_at"]),
    "order_status_history": ("history_id", ["history_id", "order_id", "status", "changed_at"]),
}


@dataclass
class Defects:
    date: dt.date
    rows: list[list[Any]]

    def add(self, system: str, entity: str, key: Any, location: str, defect: str, handling: str) -> None:
        self.rows.append([self.date.isoformat(), system, entity, str(key), location, defect, handling])


# The share of a day's rows the pipeline quarantines before it fails the load (the default of
# CRMW_MAX_QUARANTINE_RATIO); the simulator reads no pipeline code, so it is restated here.
QUARANTINE_LIMIT = 0.05


def pick_defects(
    rng: np.random.Generator, count: int, rate: float, kinds: dict[str, str], eligible: np.ndarray | None = None
) -> np.ndarray:
    """For `count` rows: '' for a clean row, else the defect it gets (uniform over `kinds`).

    Only `eligible` rows (default: all) get one. At rates up to QUARANTINE_LIMIT, at most that
    share of the eligible rows (rounded down) get a defect owed quarantine, the rest staying
    clean: a small day's delivery never trips the pipeline's limit by chance. Above it, the
    asked rate wins. The random draws are the same either way."""
    names = np.array(["", *kinds], dtype=object)
    dirty = rng.random(count) < rate
    picked = np.where(dirty, names[1:][rng.integers(0, len(kinds), count)], names[0])
    if eligible is not None:
        picked[~np.asarray(eligible, dtype=bool)] = ""
    if rate <= QUARANTINE_LIMIT:
        allowed = int(QUARANTINE_LIMIT * (count if eligible is None else int(np.sum(eligible))) + 1e-9)
        owed = np.flatnonzero(np.isin(picked, [kind for kind, handling in kinds.items() if handling == "quarantine"]))
        picked[owed[allowed:]] = ""
    return picked


class SalesDatabase:
    """The sales OLTP database; SQLite by default, PostgreSQL when given a postgresql:// URL.

    Rows are handed over column-wise (name → array). One connection serves a whole run; it is
    opened on the thread that creates it and may then be used by the `Writer`'s thread (one
    thread at a time)."""

    # SQLite's default page cache (2 MB) is far smaller than the recent orders a day updates.
    SQLITE_CACHE_KIB = 256 * 1024

    def __init__(self, url: str) -> None:
        self.url = url
        if self.is_sqlite:
            import adbc_driver_sqlite.dbapi

            # Through ADBC, SQLite binds a whole Arrow table in C without the GIL, so the `Writer`
            # inserts on the other core while the next day is computed. Python's sqlite3 takes the
            # GIL back for every row, and waits for it while the simulation holds it: the two
            # threads took turns. Transactions are begun and committed explicitly (autocommit),
            # as pragmas must run outside one.
            self._con = adbc_driver_sqlite.dbapi.connect(url[len("sqlite:///") :], autocommit=True)
            self._cursor = self._con.cursor()
            # No waiting for the disk at each commit (it took a third of a simulated day), and the
            # rollback journal kept in memory rather than written to a file next to the database:
            # a new simulation is moved into place only once complete, and an --append-day cut
            # short leaves a half-written day whatever the database does. The file is the same.
            for pragma in ("synchronous = off", "journal_mode = memory", f"cache_size = -{self.SQLITE_CACHE_KIB}"):
                self._cursor.execute(f"pragma {pragma}")
                self._cursor.fetchall()
            self._cursor.execute("begin")
            self._mark = "?"
        else:
            import psycopg

            self._con = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
            self._cursor = self._con.cursor()
            self._mark = "%s"

    def close(self) -> None:
        if self.is_sqlite:
            self._cursor.execute("commit")
            self._cursor.close()
        else:
            self._con.commit()
        self._con.close()

    def __enter__(self) -> "SalesDatabase":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite:///")

    def create(self, contract: dict[str, dict[str, str]], cursors: dict[str, str]) -> None:
        """Create the sales tables with the contract's types (SQLite, like many real systems,
        still lets a text value into a number column: the wrong_type defect relies on it), and
        an index on each cursor column, as a system read incrementally by it has."""
        types = {"string": "text", "integer": "bigint", "decimal": "numeric(18,4)", "timestamp": "timestamp", "date": "date", "boolean": "boolean", "double": "double precision"}
        for table, (key, columns) in SALES_TABLES.items():
            body = ", ".join(f"{column} {types[contract[table][column]]}" for column in columns)
            definition = f"{body}, primary key ({key})"
            if self.is_sqlite:
                # In SQLite a table is a b-tree of rows by rowid, and a primary key is a second
                # b-tree beside it, unless the key is the rowid (an `integer primary key`) or the
                # table is stored by its key (`without rowid`): one b-tree less to keep up.
                if contract[table].get(key) == "integer":
                    definition = body.replace(f"{key} bigint", f"{key} integer primary key", 1)
                    tail = ""
                else:
                    tail = " without rowid"
            else:
                tail = ""
            self._cursor.execute(f"drop table if exists {table}")
            self._cursor.execute(f"create table {table} ({definition}){tail}")
            self._cursor.execute(f"create index {table}_{cursors[table]} on {table} ({cursors[table]})")
        self.commit()

    def insert(self, table: str, columns: dict[str, np.ndarray]) -> None:
        """Insert rows given as one array per column (text columns: object arrays, None for missing)."""
        names = SALES_TABLES[table][1]
        if not len(columns[names[0]]):
            return
        if self.is_sqlite:
            self._cursor.adbc_ingest(table, pa.table({name: _arrow(columns[name]) for name in names}), mode="append")
        else:
            sql = f"insert into {table} ({', '.join(names)}) values ({', '.join(self._mark for _ in names)})"
            self._cursor.executemany(sql, list(zip(*(np.asarray(columns[name]).tolist() for name in names))))

    def execute_many(self, sql: str, parameters: list[np.ndarray]) -> None:
        """Run `sql` once per row of `parameters` (one array per ? in `sql`)."""
        if not len(parameters[0]):
            return
        if self.is_sqlite:
            self._cursor.executemany(sql, pa.table({f"p{number}": _arrow(values) for number, values in enumerate(parameters)}))
        else:
            self._cursor.executemany(sql.replace("?", self._mark), list(zip(*(np.asarray(values).tolist() for values in parameters))))

    def commit(self) -> None:
        if self.is_sqlite:
            self._cursor.execute("commit")
            self._cursor.execute("begin")
        else:
            self._con.commit()


def _arrow(values: np.ndarray | list) -> pa.Array:
    """A column for SQLite: text from object arrays (None → NULL), numbers as they are."""
    values = np.asarray(values)
    return pa.array(values, type=pa.string()) if values.dtype == object else pa.array(values)


class Writer:
    """Carries out writes (sales statements, file contents) on one background thread, strictly
    in the order they were submitted.

    Computing a day holds the GIL; SQLite executing statements and the kernel writing files do
    not. So while one day is written, the next is computed on the other core. The queue is
    bounded: a slow disk holds the simulation back instead of filling memory with days. A failed
    write skips all later ones and is raised in the submitting thread, at its next `submit` or at
    `close`. Used as a context manager: leaving normally waits for every write; leaving on an
    exception drops the writes still queued.
    """

    MAX_QUEUED = 48  # writes: a simulated day makes about 20

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue(self.MAX_QUEUED)
        self._failure: BaseException | None = None
        self._abandoned = False
        self._thread = threading.Thread(target=self._run, name="simulator-writer", daemon=True)
        self._thread.start()

    def submit(self, write: Callable[..., None], *args: Any) -> None:
        self._raise_failure()
        self._queue.put((write, args))

    def write_file(self, path: Path, data: bytes) -> None:
        """Write `data` to `path`, creating its folder if needed (on the writer's thread too:
        creating a folder may wait for the disk)."""
        self.submit(_write_file, path, data)

    def append_csv(self, path: Path, header: list[str], body: str) -> None:
        """Append the CSV text `body` to the CSV at `path`, starting it with `header` if it does
        not exist yet (checked when the write is carried out: earlier queued writes may create it)."""
        self.submit(_append_csv_text, path, csv_text([header]), body)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._raise_failure()

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abandoned = True
            self._queue.put(None)
            self._thread.join()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            if self._failure is None and not self._abandoned:
                write, args = job
                try:
                    write(*args)
                except BaseException as error:  # handed to the submitting thread
                    self._failure = error


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _append_csv_text(path: Path, header: str, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as handle:
        handle.write(header + body if new else body)


def _extended(columns: dict[str, np.ndarray], more: dict[str, Any]) -> dict[str, np.ndarray]:
    """`columns` with the rows of `more` (arrays, or one value for every added row) after them."""
    count = row_count(more)
    return {
        name: np.concatenate([columns[name], np.broadcast_to(np.asarray(more[name], dtype=columns[name].dtype), (count,))])
        for name in columns
    }


def write_sales(
    db: SalesDatabase, records: DayRecords, rng: np.random.Generator, rate: float, defects: Defects, state, writer: Writer
) -> str:
    """Insert the day's orders, lines and payments, apply due status changes, inject defects,
    commit: all through `writer`. Returns the records' truth/identities.csv rows as CSV text."""
    date = records.date
    order_ids = records.orders["order_id"]
    identities = identity_text("sales", "orders", order_ids, records.orders["_person_id"])
    orders = {name: records.orders[name] for name in SALES_TABLES["orders"][1]}
    lines = dict(records.order_lines)

    # Order defects: a test order created now and hard-deleted later, or a row arriving late.
    order_kinds = pick_defects(rng, len(order_ids), rate, ORDER_DEFECTS)
    late = order_kinds == "late_arriving"
    created = orders["created_at"].copy()
    created[late] = [f"{date - dt.timedelta(days=days)} 00:00:00" for days in rng.integers(2, 10, int(late.sum())).tolist()]
    orders["created_at"] = orders["updated_at"] = created
    for order_id in order_ids[late].tolist():
        defects.add("sales", "orders", order_id, "orders", "late_arriving", "load")
    test_orders = int((order_kinds == "test_order_deleted").sum())
    ids = np.arange(state.next_order, state.next_order + test_orders)
    if test_orders:
        state.next_order += test_orders
        created = f"{date.isoformat()} 12:00:00"
        orders = _extended(orders, {
            "order_id": ids,
            "customer_email": [f"qa+{i}@shop.test" for i in ids],
            "crm_id": None,
            "channel": "web",
            "store_id": None,
            "status": "placed",
            "created_at": created,
            "updated_at": created,
        })
        sku = lines["sku"][0] if len(lines["sku"]) else "SKU-01001"
        lines = _extended(lines, {"order_id": ids, "line_number": 1, "sku": sku, "quantity": 1, "unit_price": 1.0, "discount": 0.0, "updated_at": created})
        deletes = {"order_id": ids, "day": state.days_done - 1 + rng.integers(1, 4, test_orders), "status": np.full(test_orders, "__deleted__", dtype=object)}
        state.status_events = concat_rows(state.status_events, deletes)
        for order_id in ids.tolist():
            defects.add("sales", "orders", order_id, "orders", "test_order_deleted", "delete")

    # Line defects: bad quantities and prices are loaded and flagged; text in a number column
    # breaks the contract; orphan lines point at orders that do not exist.
    kinds = LINE_DEFECTS if db.is_sqlite else {k: v for k, v in LINE_DEFECTS.items() if k != "wrong_type"}
    # Lines of test orders get none: they vanish with their order, and the truth must still hold.
    real_line = ~np.isin(lines["order_id"], ids)
    line_kinds = pick_defects(rng, len(real_line), rate, kinds, eligible=real_line)
    hits = {kind: line_kinds == kind for kind in LINE_DEFECTS}
    lines["quantity"] = lines["quantity"].copy()
    lines["quantity"][hits["nonpositive_quantity"]] = rng.choice([0, -1, -2], int(hits["nonpositive_quantity"].sum()))
    lines["unit_price"] = lines["unit_price"].copy()
    lines["unit_price"][hits["nonpositive_price"]] = rng.choice([0.0, -4.99], int(hits["nonpositive_price"].sum()))
    for kind in ("nonpositive_quantity", "nonpositive_price", "wrong_type"):
        for order_id, line_number in zip(lines["order_id"][hits[kind]].tolist(), lines["line_number"][hits[kind]].tolist()):
            defects.add("sales", "order_lines", f"{order_id}-{line_number}", "order_lines", kind, LINE_DEFECTS[kind])
    wrong_type = [lines[name][hits["wrong_type"]] for name in ("order_id", "line_number")]
    if hits["orphan_line"].any():
        orphans = {name: values[hits["orphan_line"]] for name, values in lines.items()}
        orphans["order_id"] = 900_000_000 + orphans["order_id"]
        for order_id, line_number in zip(orphans["order_id"].tolist(), orphans["line_number"].tolist()):
            defects.add("sales", "order_lines", f"{order_id}-{line_number}", "order_lines", "orphan_line", "flag")
        lines = _extended(lines, orphans)

    writer.submit(db.insert, "orders", orders)
    writer.submit(db.insert, "order_lines", lines)
    # Text where a number belongs: written over the inserted quantity, as Arrow columns hold one type.
    writer.submit(db.execute_many, "update order_lines set quantity = 'two' where order_id = ? and line_number = ?", wrong_type)
    writer.submit(db.insert, "payments", records.payments)
    _log_status(db, writer, state, orders["order_id"], orders["status"], orders["created_at"])

    changes = records.status_changes
    deleted = changes["status"] == "__deleted__"
    gone = changes["order_id"][deleted]
    writer.submit(db.execute_many, "delete from order_lines where order_id = ?", [gone])
    writer.submit(db.execute_many, "delete from orders where order_id = ?", [gone])
    writer.submit(db.execute_many, "delete from payments where payment_id = ?", [np.array([f"P{i}" for i in gone.tolist()], dtype=object)])
    ids, statuses, times = (changes[name][~deleted] for name in ("order_id", "status", "changed_at"))
    writer.submit(db.execute_many, "update orders set status = ?, updated_at = ? where order_id = ?", [statuses, times, ids])
    returned = statuses == "returned"
    writer.submit(
        db.execute_many,
        "insert into payments (payment_id, order_id, method, amount, paid_at)"
        " select ?, order_id, method, -amount, ? from payments where payment_id = ?",
        [
            np.array([f"P{i}-R" for i in ids[returned].tolist()], dtype=object),
            times[returned],
            np.array([f"P{i}" for i in ids[returned].tolist()], dtype=object),
        ],
    )
    _log_status(db, writer, state, ids, statuses, times)
    writer.submit(db.commit)
    return identities


def _log_status(db: SalesDatabase, writer: Writer, state, order_ids: np.ndarray, statuses: np.ndarray, times: np.ndarray) -> None:
    count = len(order_ids)
    if not count:
        return
    history_ids = np.arange(state.next_history, state.next_history + count)
    state.next_history += count
    writer.submit(db.insert, "order_status_history", {"history_id": history_ids, "order_id": order_ids, "status": statuses, "changed_at": times})


def write_products(db: SalesDatabase, products: pd.DataFrame, date: dt.date) -> None:
    columns = {name: products[name].to_numpy() for name in SALES_TABLES["products"][1] if name != "updated_at"}
    db.insert("products", columns | {"updated_at": np.full(len(products), f"{date.isoformat()} 00:00:00", dtype=object)})
    db.commit()


def identity_text(system: str, entity: str, keys: np.ndarray, person_ids: np.ndarray) -> str:
    """truth/identities.csv rows (system, entity, record_key, person_id) for one entity's
    records, printed in one go: keys and person ids are numbers or simulator-made ids, which
    CSV never quotes."""
    values: list = [None] * (2 * len(keys))
    values[0::2], values[1::2] = np.asarray(keys).tolist(), np.asarray(person_ids).tolist()
    return (f"{system},{entity},%s,%s\n" * len(keys)) % tuple(values)


def csv_text(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def write_crm(
    folder: Path,
    records: DayRecords,
    columns: dict[str, list[str]],
    rng: np.random.Generator,
    rate: float,
    defects: Defects,
    state,
    extra_column: str | None,
    writer: Writer,
) -> str:
    """Write the day's CRM drop through `writer`; returns its truth/identities.csv rows as CSV text."""
    date = records.date
    drop = folder / "crm" / date.isoformat()

    customer_columns = list(columns["customers"]) + ([extra_column] if extra_column else [])
    customers = records.customers
    count = row_count(customers)
    # Printed column by column, straight from the day's records (no altered copy of them).
    printed_columns = {name: _cells(customers, name) if name in _FLAGS else _printed(customers, name, count) for name in columns["customers"]}
    if extra_column:
        printed_columns[extra_column] = rng.choice(np.array(["en", "pt", "de", "fr", "es"]), count).tolist()
    kinds = pick_defects(rng, count, rate, CUSTOMER_DEFECTS)
    printed = list(zip(*(printed_columns[name] for name in customer_columns)))
    clean_identities = [["crm", "customers", crm_id, person_id] for crm_id, person_id in zip(customers["crm_id"].tolist(), customers["person_id"].tolist())]
    identities, extra_rows = [], []
    chunks: list[bytes] = [csv_text([customer_columns]).encode()]
    # Clean rows (nearly all) are printed in runs by one csv call each; a dirty row (drawing from
    # `rng` in row order) is printed alone, as its defect has it.
    done = 0
    for position in np.flatnonzero(kinds != "").tolist():
        kind = kinds[position]
        chunks.append(csv_text(printed[done:position]).encode("utf-8"))
        identities += clean_identities[done : position + 1]
        done = position + 1
        row = dict(zip(customer_columns, printed[position]), person_id=clean_identities[position][3])
        line = position + 2  # after the header, counting from 1
        if kind == "invalid_email":
            row["email"] = str(rng.choice([row["email"].replace("@", ""), row["email"].split("@")[0] + "@", row["email"].replace("@", "@@"), "n/a"]))
        elif kind == "invalid_phone":
            row["phone"] = str(rng.choice(["12", "phone", "+351 12-ab-34", "0000"]))
        elif kind == "missing_birth_date":
            row["birth_date"] = ""
        elif kind == "impossible_birth_date":
            row["birth_date"] = str(rng.choice(["2097-05-05", "1850-01-01"]))
        elif kind == "duplicate_person":
            twin = dict(row)
            state.next_duplicate += 1
            twin["crm_id"] = f"C{90_000_000 + state.next_duplicate:08d}"
            twin["email"] = str(rng.choice([f"  {row['email']}", row["email"].upper(), f"{row['email'].title()} "]))
            extra_rows.append((twin, "duplicate_person"))
            identities.append(["crm", "customers", twin["crm_id"], row["person_id"]])
        elif kind == "late_arriving":
            late = dict(row)
            late["modified_at"] = (pd.Timestamp(row["modified_at"]) - pd.Timedelta(days=int(rng.integers(30, 300)))).strftime("%Y-%m-%d %H:%M:%S")
            extra_rows.append((late, "late_arriving"))
        elif kind == "missing_key":
            row["crm_id"] = ""
        chunks.append(_customer_line(row, customer_columns, kind))
        if kind not in ("duplicate_person", "late_arriving"):  # for those, the added row below
            defects.add("crm", "customers", row["crm_id"], f"crm/{date}/customers.csv:{line}", kind, CUSTOMER_DEFECTS[kind])
    chunks.append(csv_text(printed[done:]).encode("utf-8"))
    identities += clean_identities[done:]
    for line, (row, kind) in enumerate(extra_rows, start=len(printed) + 2):
        chunks.append(_customer_line(row, customer_columns, ""))
        defects.add("crm", "customers", row["crm_id"], f"crm/{date}/customers.csv:{line}", kind, CUSTOMER_DEFECTS[kind])
    writer.write_file(drop / "customers.csv", b"".join(chunks))

    for entity, table in (
        ("interactions", records.interactions),
        ("campaigns", records.campaigns),
        ("campaign_members", records.campaign_members),
    ):
        names = columns[entity]
        rows = list(zip(*(_cells(table, name) for name in names))) if row_count(table) else []
        writer.write_file(drop / f"{entity}.csv", csv_text([names, *rows]).encode("utf-8"))
    return csv_text(identities)


_FLAGS = ("marketing_opt_in", "sent", "opened", "clicked", "converted")  # CRM booleans, printed true/false


def _cells(table: dict[str, np.ndarray], name: str) -> list:
    """A column as the CRM export prints it: flags as true/false, '' for a missing value."""
    values = np.asarray(table[name], dtype=object)
    if name in _FLAGS:
        return np.where(values.astype(bool), "true", "false").tolist()
    missing = pd.isna(values)
    # A new array when something is missing: `values` may be the table's own.
    return (np.where(missing, "", values) if missing.any() else values).tolist()


def _printed(table: dict[str, np.ndarray], name: str, count: int) -> list[str]:
    """A column as text the way the CSV prints it: '' for a missing value, or a missing column."""
    if name not in table:
        return [""] * count
    return ["" if value is None else str(value) for value in table[name].tolist()]


def _customer_line(row: dict, columns: list[str], kind: str) -> bytes:
    values = [row[name] for name in columns]
    if kind == "broken_column_count":
        values = values[:-2]
    line = csv_text([values]).encode("utf-8")
    if kind == "bad_bytes":
        line = line.replace(values[2].encode(), values[2].encode()[:2] + b"\xff\xfe" + values[2].encode()[2:], 1)
    return line


def write_service(
    folder: Path, records: DayRecords, columns: list[str], rng: np.random.Generator, rate: float, defects: Defects, writer: Writer
) -> str:
    """Write the day's service-desk export through `writer`; returns its truth/identities.csv
    rows as CSV text.

    Lines are assembled column-wise from each field's JSON text, as json.dumps(record,
    ensure_ascii=False) prints a record: a ticket at a time through the json module took the
    better part of a simulated day."""
    date = records.date
    path = folder / "service" / date.isoformat() / "tickets.jsonl"
    tickets = records.tickets
    kinds = pick_defects(rng, len(tickets), rate, TICKET_DEFECTS)
    if not len(tickets):
        writer.write_file(path, b"")
        return ""
    ticket_ids = tickets.columns["ticket_id"].tolist()
    fields = {}
    for name in columns:
        if name == "tags":
            fields[name] = _json_arrays([_json_texts(tag, missing=None) for tag in tickets.tags])
        elif name == "status_history":
            items = []
            for status, at in tickets.status_history:
                head = f'{{"status": {_quoted(status)}, "at": '
                items.append([None if text is None else f"{head}{text}}}" for text in _json_texts(at, missing=None)])
            fields[name] = _json_arrays(items)
        elif name in tickets.columns:
            fields[name] = _json_texts(tickets.columns[name])
        else:
            fields[name] = ["null"] * len(tickets)
    dirty = np.flatnonzero(kinds != "").tolist()
    for position in dirty:
        if kinds[position] == "missing_key":
            fields["ticket_id"][position] = "null"
        elif kinds[position] == "wrong_type":
            fields["ticket_id"][position] = _quoted(f"T-{ticket_ids[position]}")
    template = "{" + ", ".join(_quoted(name).replace("%", "%%") + ": %s" for name in columns) + "}"
    lines = [template % values for values in zip(*(fields[name] for name in columns))]
    for position in dirty:
        kind = kinds[position]
        if kind == "invalid_json":
            lines[position] = lines[position][: len(lines[position]) // 2]
        defects.add("service", "tickets", ticket_ids[position], f"service/{date}/tickets.jsonl:{position + 1}", kind, TICKET_DEFECTS[kind])
    writer.write_file(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return identity_text("service", "tickets", tickets.columns["ticket_id"], tickets.columns["_person_id"])


_quoted = json.encoder.encode_basestring  # a JSON string as json.dumps(..., ensure_ascii=False) prints it


def _json_texts(values: np.ndarray, missing: str | None = "null") -> list:
    """Each value of a column as JSON text (text, or integers); `missing` for None. Each
    distinct value is printed once: most columns hold a handful."""
    if values.dtype.kind in "iu":
        return values.astype(str).tolist()
    codes, distinct = pd.factorize(values)  # None: code -1, the last text
    texts = [_quoted(value) if isinstance(value, str) else str(value) for value in distinct.tolist()] + [missing]
    return np.array(texts, dtype=object)[codes].tolist()


def _json_arrays(items: list[list]) -> list[str]:
    """JSON arrays, one per row, of the items' texts (one list per item position) that are not None."""
    return ["[" + ", ".join(filter(None, row)) + "]" for row in zip(*items)]
