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
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from simulator.engine import DayRecords

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

    One connection serves a whole run; it is opened on the thread that creates it and may then
    be used by the `Writer`'s thread (one thread at a time)."""

    # SQLite's default page cache (2 MB) is far smaller than the recent orders a day updates.
    SQLITE_CACHE_KIB = 256 * 1024

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            self._con = sqlite3.connect(url[len("sqlite:///") :], check_same_thread=False)
            # No waiting for the disk at each commit (it took a third of a simulated day), and the
            # rollback journal kept in memory rather than written to a file next to the database:
            # a new simulation is moved into place only once complete, and an --append-day cut
            # short leaves a half-written day whatever the database does. The file is the same.
            self._con.execute("pragma synchronous = off")
            self._con.execute("pragma journal_mode = memory")
            self._con.execute(f"pragma cache_size = -{self.SQLITE_CACHE_KIB}")
            self._mark = "?"
        else:
            import psycopg

            self._con = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
            self._mark = "%s"

    def close(self) -> None:
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
            self._con.execute(f"drop table if exists {table}")
            self._con.execute(f"create table {table} ({body}, primary key ({key}))")
            self._con.execute(f"create index {table}_{cursors[table]} on {table} ({cursors[table]})")
        self._con.commit()

    def insert(self, table: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        columns = SALES_TABLES[table][1]
        sql = f"insert into {table} ({', '.join(columns)}) values ({', '.join(self._mark for _ in columns)})"
        cursor = self._con.cursor()
        cursor.executemany(sql, rows)

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._con.cursor().executemany(sql.replace("?", self._mark), rows)

    def commit(self) -> None:
        self._con.commit()


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
        self.submit(path.write_bytes, data)

    def append_csv(self, path: Path, header: list[str], rows: list[list]) -> None:
        """Append `rows` to the CSV at `path`, starting it with `header` if it does not exist yet
        (checked when the write is carried out: earlier queued writes may create it)."""
        self.submit(_append_csv_text, path, _csv_text([header]), _csv_text(rows))

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


def _append_csv_text(path: Path, header: str, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as handle:
        handle.write(header + body if new else body)


def _rows(frame: pd.DataFrame, columns: list[str]) -> list[tuple]:
    """Rows as tuples of plain Python values, None for missing ones."""
    listed = []
    for name in columns:
        column = frame[name]
        if column.dtype.kind in "iub":  # integers and booleans are never missing
            listed.append(column.to_numpy().tolist())
        elif column.dtype == np.float64:  # NaN for missing: found without boxing every number
            values = column.to_numpy()
            listed.append(values.tolist())
            for position in np.flatnonzero(np.isnan(values)).tolist():
                listed[-1][position] = None
        else:
            values = column.to_numpy(dtype=object)
            missing = pd.isna(values)
            if missing.any():
                values = values.copy()
                values[missing] = None
            listed.append(values.tolist())
    return list(zip(*listed))


def write_sales(
    db: SalesDatabase, records: DayRecords, rng: np.random.Generator, rate: float, defects: Defects, state, writer: Writer
) -> list[list]:
    """Insert the day's orders, lines and payments, apply due status changes, inject defects,
    commit: all through `writer`. Returns identity rows (system, entity, key, person_id)."""
    date = records.date
    orders, lines = records.orders.copy(), records.order_lines.copy()
    identities = [["sales", "orders", o, p] for o, p in zip(orders["order_id"].tolist(), orders["_person_id"].tolist())]

    # Order defects: a test order created now and hard-deleted later, or a row arriving late.
    order_kinds = pick_defects(rng, len(orders), rate, ORDER_DEFECTS)
    late = order_kinds == "late_arriving"
    earlier = (pd.Timestamp(date) - pd.to_timedelta(rng.integers(2, 10, int(late.sum())), unit="D")).strftime("%Y-%m-%d %H:%M:%S")
    orders.loc[late, ["created_at", "updated_at"]] = np.column_stack([earlier, earlier])
    for order_id in orders.loc[late, "order_id"]:
        defects.add("sales", "orders", int(order_id), "orders", "late_arriving", "load")
    test_orders = int((order_kinds == "test_order_deleted").sum())
    ids = np.arange(state.next_order, state.next_order + test_orders)
    if test_orders:
        state.next_order += test_orders
        created = f"{date.isoformat()} 12:00:00"
        test = pd.DataFrame(
            {
                "order_id": ids,
                "customer_email": [f"qa+{i}@shop.test" for i in ids],
                "crm_id": None,
                "channel": "web",
                "store_id": None,
                "status": "placed",
                "created_at": created,
                "updated_at": created,
            }
        )
        orders = pd.concat([orders, test], ignore_index=True)
        lines = pd.concat(
            [lines, pd.DataFrame({"order_id": ids, "line_number": 1, "sku": records.order_lines["sku"].iloc[0] if len(records.order_lines) else "SKU-01001", "quantity": 1, "unit_price": 1.0, "discount": 0.0, "updated_at": created})],
            ignore_index=True,
        )
        deletes = pd.DataFrame({"order_id": ids, "day": state.days_done - 1 + rng.integers(1, 4, test_orders), "status": "__deleted__"})
        state.status_events = pd.concat([state.status_events, deletes], ignore_index=True)
        for order_id in ids:
            defects.add("sales", "orders", int(order_id), "orders", "test_order_deleted", "delete")

    # Line defects: bad quantities and prices are loaded and flagged; text in a number column
    # breaks the contract; orphan lines point at orders that do not exist.
    kinds = LINE_DEFECTS if db.is_sqlite else {k: v for k, v in LINE_DEFECTS.items() if k != "wrong_type"}
    # Lines of test orders get none: they vanish with their order, and the truth must still hold.
    real_line = ~lines["order_id"].isin(ids).to_numpy()
    line_kinds = pick_defects(rng, len(lines), rate, kinds, eligible=real_line)
    quantity = lines["quantity"].astype(object)
    quantity[line_kinds == "nonpositive_quantity"] = rng.choice([0, -1, -2], int((line_kinds == "nonpositive_quantity").sum()))
    quantity[line_kinds == "wrong_type"] = "two"
    lines["quantity"] = quantity
    lines.loc[line_kinds == "nonpositive_price", "unit_price"] = rng.choice([0.0, -4.99], int((line_kinds == "nonpositive_price").sum()))
    # Defective lines are found in the two key columns alone: filtering the whole frame per kind
    # cost more than listing them.
    line_order_ids, line_numbers = lines["order_id"].to_numpy(), lines["line_number"].to_numpy()
    for kind in ("nonpositive_quantity", "nonpositive_price", "wrong_type"):
        hit = line_kinds == kind
        for order_id, line_number in zip(line_order_ids[hit].tolist(), line_numbers[hit].tolist()):
            defects.add("sales", "order_lines", f"{order_id}-{line_number}", "order_lines", kind, LINE_DEFECTS[kind])
    orphaned = line_kinds == "orphan_line"
    if orphaned.any():
        orphans = lines[orphaned].copy()
        orphans["order_id"] = 900_000_000 + orphans["order_id"]
        for order_id, line_number in zip(orphans["order_id"].tolist(), orphans["line_number"].tolist()):
            defects.add("sales", "order_lines", f"{order_id}-{line_number}", "order_lines", "orphan_line", "flag")
        lines = pd.concat([lines, orphans], ignore_index=True)

    writer.submit(db.insert, "orders", _rows(orders, SALES_TABLES["orders"][1]))
    writer.submit(db.insert, "order_lines", _rows(lines, SALES_TABLES["order_lines"][1]))
    payments = records.payments.assign(payment_id=[f"P{i}" for i in records.payments["order_id"]])
    writer.submit(db.insert, "payments", _rows(payments, SALES_TABLES["payments"][1]))
    history = orders[["order_id", "status", "created_at"]].rename(columns={"created_at": "changed_at"})
    _log_status(db, writer, state, history)

    changes = records.status_changes
    deleted = changes["status"] == "__deleted__"
    gone = [(int(order_id),) for order_id in changes.loc[deleted, "order_id"]]
    writer.submit(db.execute_many, "delete from order_lines where order_id = ?", gone)
    writer.submit(db.execute_many, "delete from orders where order_id = ?", gone)
    writer.submit(db.execute_many, "delete from payments where payment_id = ?", [(f"P{order_id}",) for (order_id,) in gone])
    changes = changes[~deleted]
    ids, statuses, times = changes["order_id"].astype(int).tolist(), changes["status"].tolist(), changes["changed_at"].tolist()
    writer.submit(db.execute_many, "update orders set status = ?, updated_at = ? where order_id = ?", list(zip(statuses, times, ids)))
    writer.submit(
        db.execute_many,
        "insert into payments (payment_id, order_id, method, amount, paid_at)"
        " select ?, order_id, method, -amount, ? from payments where payment_id = ?",
        [(f"P{i}-R", t, f"P{i}") for i, s, t in zip(ids, statuses, times) if s == "returned"],
    )
    _log_status(db, writer, state, changes)
    writer.submit(db.commit)
    return identities


def _log_status(db: SalesDatabase, writer: Writer, state, changes: pd.DataFrame) -> None:
    count = len(changes)
    if not count:
        return
    ids = np.arange(state.next_history, state.next_history + count)
    state.next_history += count
    writer.submit(
        db.insert,
        "order_status_history",
        list(zip(ids.tolist(), changes["order_id"].astype(int).tolist(), changes["status"].tolist(), changes["changed_at"].tolist())),
    )


def write_products(db: SalesDatabase, products: pd.DataFrame, date: dt.date) -> None:
    frame = products.assign(updated_at=f"{date.isoformat()} 00:00:00")
    db.insert("products", _rows(frame, SALES_TABLES["products"][1]))
    db.commit()


def _csv_text(rows: list[list[Any]]) -> str:
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
) -> list[list]:
    """Write the day's CRM drop through `writer`; returns identity rows."""
    date = records.date
    drop = folder / "crm" / date.isoformat()
    drop.mkdir(parents=True, exist_ok=True)

    customer_columns = list(columns["customers"]) + ([extra_column] if extra_column else [])
    customers = records.customers
    # Printed column by column, straight from the day's records (no altered copy of the frame).
    printed_columns = {name: _cells(customers, name) if name in _FLAGS else _printed(customers, name) for name in columns["customers"]}
    if extra_column:
        printed_columns[extra_column] = rng.choice(np.array(["en", "pt", "de", "fr", "es"]), len(customers)).tolist()
    kinds = pick_defects(rng, len(customers), rate, CUSTOMER_DEFECTS)
    printed = list(zip(*(printed_columns[name] for name in customer_columns)))
    clean_identities = [["crm", "customers", crm_id, person_id] for crm_id, person_id in zip(customers["crm_id"].tolist(), customers["person_id"].tolist())]
    identities, extra_rows = [], []
    chunks: list[bytes] = [_csv_text([customer_columns]).encode()]
    # Clean rows (nearly all) are printed in runs by one csv call each; a dirty row (drawing from
    # `rng` in row order) is printed alone, as its defect has it.
    done = 0
    for position in np.flatnonzero(kinds != "").tolist():
        kind = kinds[position]
        chunks.append(_csv_text(printed[done:position]).encode("utf-8"))
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
    chunks.append(_csv_text(printed[done:]).encode("utf-8"))
    identities += clean_identities[done:]
    for line, (row, kind) in enumerate(extra_rows, start=len(printed) + 2):
        chunks.append(_customer_line(row, customer_columns, ""))
        defects.add("crm", "customers", row["crm_id"], f"crm/{date}/customers.csv:{line}", kind, CUSTOMER_DEFECTS[kind])
    writer.write_file(drop / "customers.csv", b"".join(chunks))

    for entity, frame in (
        ("interactions", records.interactions),
        ("campaigns", records.campaigns),
        ("campaign_members", records.campaign_members),
    ):
        names = columns[entity]
        rows = list(zip(*(_cells(frame, name) for name in names))) if len(frame) else []
        writer.write_file(drop / f"{entity}.csv", _csv_text([names, *rows]).encode("utf-8"))
    return identities


_FLAGS = ("marketing_opt_in", "sent", "opened", "clicked", "converted")  # CRM booleans, printed true/false


def _cells(frame: pd.DataFrame, name: str) -> list:
    """A column as the CRM export prints it: flags as true/false, '' for a missing value.
    Worked column by column: pandas operations on a whole frame cost more than a day's rows."""
    values = frame[name].to_numpy(dtype=object)
    if name in _FLAGS:
        return np.where(values.astype(bool), "true", "false").tolist()
    missing = pd.isna(values)
    # A new array when something is missing: `values` may be the frame's own.
    return (np.where(missing, "", values) if missing.any() else values).tolist()


def _printed(frame: pd.DataFrame, name: str) -> list[str]:
    """A column as text the way the CSV prints it: '' for a missing value, or a missing column."""
    if name not in frame:
        return [""] * len(frame)
    return ["" if value is None else str(value) for value in frame[name].to_numpy(dtype=object)]


def _customer_line(row: dict, columns: list[str], kind: str) -> bytes:
    values = [row[name] for name in columns]
    if kind == "broken_column_count":
        values = values[:-2]
    line = _csv_text([values]).encode("utf-8")
    if kind == "bad_bytes":
        line = line.replace(values[2].encode(), values[2].encode()[:2] + b"\xff\xfe" + values[2].encode()[2:], 1)
    return line


_JSON = json.JSONEncoder(ensure_ascii=False)  # as json.dumps(..., ensure_ascii=False), built once


def write_service(
    folder: Path, records: DayRecords, columns: list[str], rng: np.random.Generator, rate: float, defects: Defects, writer: Writer
) -> list[list]:
    """Write the day's service-desk export through `writer`; returns identity rows."""
    date = records.date
    path = folder / "service" / date.isoformat() / "tickets.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    kinds = pick_defects(rng, len(records.tickets), rate, TICKET_DEFECTS)
    lines, identities = [], []
    for number, (ticket, kind) in enumerate(zip(records.tickets, kinds), start=1):
        identities.append(["service", "tickets", ticket["ticket_id"], ticket["_person_id"]])
        record = {name: ticket.get(name) for name in columns}
        if kind == "missing_key":
            record["ticket_id"] = None
        elif kind == "wrong_type":
            record["ticket_id"] = f"T-{record['ticket_id']}"
        text = _JSON.encode(record)
        if kind == "invalid_json":
            text = text[: len(text) // 2]
        if kind:
            defects.add("service", "tickets", ticket["ticket_id"], f"service/{date}/tickets.jsonl:{number}", kind, TICKET_DEFECTS[kind])
        lines.append(text + "\n")
    writer.write_file(path, "".join(lines).encode("utf-8"))
    return identities
