"""Which keys of a SQL table the daily key reconciliation must compare: those of the buckets whose
digests differ between the source and raw.

Comparing every source key with every version in raw each day cost with the history (31 s a day
on PostgreSQL at 100k customers). Instead both sides summarise the keys in KEY_BUCKETS buckets: a
key's hash is exact integer arithmetic that SQLite, PostgreSQL and DuckDB all compute alike, its
bucket is the hash modulo KEY_BUCKETS, and a bucket's digest is the count of its keys and two sums
over their hashes (no order changes them). The source computes the digests of the keys visible at
the window's end itself and sends KEY_BUCKETS rows. The warehouse keeps a key state: the keys whose
latest version in raw is not a tombstone (live), with their hashes, as of the raw rows loaded
before a date (`covers_before`); each reconciliation adds the rows loaded since then, so it reads a
day or two of raw, not its history. The state's own digests are kept beside it (one row per
bucket) and moved by what each reconciliation folds in, so raw's side of the comparison reads the
buckets' digests and the keys of a day or two, not every key (summed over every key each day,
they were a third of a steady day's reconciliation on PostgreSQL: 2.3 of 6.9 s at 10,000
customers, three tables of 180,000 to 700,000 keys). Equal digests mean the source's visible keys
are raw's live keys: nothing to tombstone or recover there. Only the keys of differing buckets go
through the comparison key by key, which therefore gives what comparing every key gives.

The key state is rebuilt from raw (once, costing the history as every day did before) when
none exists, or when raw's rows below the date it covers changed since it was kept: a rerun of
an earlier date rewrites that date's load audit row, a full refresh removes them, so the audit
rows below the date tell. A date before the one the state covers whose audit rows did not change
(reconciled for the first time after later dates) is compared whole: the state holds later rows,
and undoing them would cost the history again. The hash is integer arithmetic, so only tables
keyed by integers are bucketed; others (the product catalog, keyed by SKU text) are compared whole.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Iterable, Sequence

from extract_load.contract import Entity

if TYPE_CHECKING:
    from extract_load.sql_source import SqlSource
    from warehouse import Warehouse

# The buckets that differ on a day are about as many as the keys deleted or recovered that day,
# so a bucket's size is what each of them costs: with 1,024 buckets, a million customers' ~470 a
# day made 118 of the order lines' buckets differ (8.0M of their 69M keys read again and compared
# one by one) and 208 of the orders'. At 65,536 a bucket holds ~1,000 of those lines (126,000 read
# that day); the digests stay small (65,536 rows a side at most).
KEY_BUCKETS = 65_536
# A prime below 2**31 and a multiplier below it: (hash + value) * multiplier stays below 2**63,
# so no engine overflows or turns to floating point.
HASH_MODULUS = 2_147_483_647
HASH_MULTIPLIER = 1_103_515_245
KEY_STATE_SYNC = "raw_meta.key_state_sync"
# A key's versions, latest first: by delivery, a tombstone before the version it deletes.
LATEST_VERSION_FIRST = "_delivery_date desc, coalesce(_deleted, false) desc, _batch_date desc"
_SYNC_COLUMNS = {"system": "string", "entity": "string", "covers_before": "date", "audit_fingerprint": "string"}
_DIGEST_COLUMNS = {"bucket": "integer", "keys": "integer", "hash_sum": "integer", "square_sum": "integer"}

Digests = dict[int, tuple[int, int, int]]


def key_hash_sql(integer_values: Sequence[str]) -> str:
    """The hash of a key as SQL, from SQL expressions giving each key column's exact integer (or
    null: the hash is then null)."""
    hashed = "0"
    for value in integer_values:
        residue = f"((({value}) % {HASH_MODULUS}) + {HASH_MODULUS}) % {HASH_MODULUS}"
        hashed = f"((({hashed}) + {residue}) * {HASH_MULTIPLIER}) % {HASH_MODULUS}"
    return hashed


def key_hash(values: Sequence[int]) -> int:
    """key_hash_sql's hash, in Python, of a key's integers."""
    hashed = 0
    for value in values:
        hashed = ((hashed + value % HASH_MODULUS) * HASH_MULTIPLIER) % HASH_MODULUS
    return hashed


def digest_columns_sql(hashed: str) -> str:
    """bucket, key count and the two hash sums of the rows of a query grouped by its first column."""
    return (
        f"({hashed}) % {KEY_BUCKETS} as bucket, count(*) as keys, cast(sum({hashed}) as bigint) as hash_sum,"
        f" cast(sum((({hashed}) * ({hashed})) % {HASH_MODULUS}) as bigint) as square_sum"
    )


def is_bucketed(entity: Entity) -> bool:
    return all(entity.column_types[name] == "integer" for name in entity.primary_key)


def source_key_hash(source: "SqlSource", entity: Entity) -> str:
    return key_hash_sql([source.exact_integer(name) for name in entity.primary_key])


def source_bucketed_rows(source: "SqlSource", entity: Entity, buckets: Sequence[int]) -> tuple[str, str]:
    """The source rows of `buckets`, and every row whose key is no exact integer there (those have
    no bucket, and are few: a dirty source's, always compared key by key), as a table to read
    (the key and cursor columns with the key's hash, fenced so that the hash is computed once per
    row: in the condition alone, SQLite computed it twice, 3.5 s instead of 2.7 s for the order
    lines at 100,000 customers) and the condition on it."""
    columns = ", ".join(dict.fromkeys([*entity.primary_key, entity.cursor]))
    table = f"(select {columns}, {source_key_hash(source, entity)} as _hash from {entity.name} {source.fence}) as hashed"
    chosen = f"_hash % {KEY_BUCKETS} in ({', '.join(map(str, buckets))}) or " if buckets else ""
    return table, f"{chosen}_hash is null"


class KeyState:
    """The live keys of one table's raw as of a reconciliation's date: the key state, less the keys
    of the raw rows loaded since it was kept (`changed_keys`), plus those of them still live. The
    compared keys (`live_keys`: raw's live keys of the buckets whose digests differ), the changed
    ones, those the source lost (`gone_keys`) and those quarantine holds back (`held_keys`) are
    scratch tables of the reconciliation's transaction; the state's digests (`state_digests`) are
    kept with it."""

    def __init__(self, warehouse: "Warehouse", entity: Entity, audit_table: str) -> None:
        self.warehouse = warehouse
        self.entity = entity
        self.audit_table = audit_table
        suffix = f"{entity.system.name}__{entity.name}"
        self.state_table = f"raw_meta.key_state__{suffix}"
        self.changed_keys = f"raw_meta.changed_keys__{suffix}"
        self.live_keys = f"raw_meta.live_keys__{suffix}"
        self.gone_keys = f"raw_meta.gone_keys__{suffix}"
        self.held_keys = f"raw_meta.held_keys__{suffix}"
        self.state_digests = f"raw_meta.key_digests__{suffix}"
        self._kept_digests: Digests | None = None  # the state's, once read or written
        self._key = ", ".join(entity.primary_key)
        self._hash = key_hash_sql([f"cast({name} as bigint)" for name in entity.primary_key])

    def load_changes(self, logical_date: dt.date) -> bool:
        """Fill `changed_keys` with the keys of the raw rows loaded since the state was kept, up to
        `logical_date`, each with its hash while it is live (else null); then keep the state up to
        the day before. False (nothing filled) for a date before the one the state covers."""
        columns = {name: "integer" for name in self.entity.primary_key}
        for table in (self.state_table, self.changed_keys, self.live_keys, self.gone_keys, self.held_keys):
            self.warehouse.ensure_table(table, {**columns, "_hash": "integer"})
        self.warehouse.ensure_index(self.state_table, self.entity.primary_key)
        self.warehouse.ensure_table(self.state_digests, _DIGEST_COLUMNS)
        self.warehouse.ensure_table(KEY_STATE_SYNC, _SYNC_COLUMNS)
        where = "system = ? and entity = ?"
        names = (self.entity.system.name, self.entity.name)
        kept = self.warehouse.fetchall(f"select covers_before, audit_fingerprint from {KEY_STATE_SYNC} where {where}", names)
        covers_before = kept[0][0] if kept else None
        rebuilt = covers_before is None or kept[0][1] != self._audit_fingerprint(covers_before)
        if rebuilt:
            # First run, or raw changed below the state since (a rerun of an earlier date, a full
            # refresh): built from raw once.
            self.warehouse.empty_table(self.state_table)
            self._insert_live(self.state_table, None, logical_date, live_only=True)
            covers_before = logical_date
        elif covers_before > logical_date:
            return False
        # A new state, or one kept by an earlier version (which summed every key daily): digested
        # whole, once.
        if rebuilt or (not self.warehouse.fetchall(f"select 1 from {self.state_digests} limit 1")
                       and self.warehouse.fetchall(f"select 1 from {self.state_table} limit 1")):
            self._store_digests(self._digests(f"select _hash from {self.state_table}"))
        self.warehouse.empty_table(self.changed_keys)
        self._insert_live(self.changed_keys, covers_before, logical_date + dt.timedelta(days=1), live_only=False)
        self.warehouse.refresh_statistics(self.changed_keys)
        self._keep_until(covers_before, logical_date)
        self.warehouse.delete_rows(KEY_STATE_SYNC, where, names)
        self.warehouse.execute(
            f"insert into {KEY_STATE_SYNC} ({', '.join(_SYNC_COLUMNS)}) values (?, ?, ?, ?)", (*names, logical_date, self._audit_fingerprint(logical_date))
        )
        return True

    def differing_buckets(self, source: "SqlSource", visible: str, params: Sequence,
                          quarantined: Iterable[Sequence[int]] = ()) -> list[int]:
        """The buckets whose digests differ between the source's keys that meet `visible` and raw's
        live keys; fills `live_keys` with raw's live keys of those buckets, to compare one by one.
        `quarantined`: the integer keys of source rows quarantine holds. Those raw lacks count on
        its side too: the source keeps a row that failed the contract, and its bucket would
        otherwise differ every day (at 100,000 customers, 0.2% of order lines quarantined made all
        1,024 buckets differ and the whole table, 7M keys, was compared daily). Only which buckets
        are compared depends on it: the key-by-key comparison is the same."""
        at_source = source_digests(source, self.entity, visible, params)
        # Raw's live keys: the state's, less those of the changed keys it holds, plus the changed
        # keys still live.
        in_raw = dict(self._stored_digests())
        _add(in_raw, self._digests(f"select kept._hash from {self.state_table} as kept where exists"
                                   f" (select 1 from {self.changed_keys} as changed where {_same_key(self.entity, 'changed', 'kept')})"), -1)
        _add(in_raw, self._digests(f"select _hash from {self.changed_keys} where _hash is not null"), +1)
        self.warehouse.empty_table(self.held_keys)
        held = sorted({tuple(key) for key in quarantined})
        if held:  # most tables have none
            import pyarrow as pa

            columns = {name: pa.array([key[position] for key in held], pa.int64()) for position, name in enumerate(self.entity.primary_key)}
            self.warehouse.append_arrow(self.held_keys, pa.table({**columns, "_hash": pa.array([key_hash(key) for key in held], pa.int64())}))
            # Held keys raw lacks: not changed and live, and changed but dead or not in the state.
            # Spelt key by key: as an anti-join with the live keys' union, PostgreSQL read the whole
            # state (6.3 s for 16,000 held order lines at 100,000 customers) instead of its index.
            changed = f"select 1 from {self.changed_keys} as changed where {_same_key(self.entity, 'changed', 'held')}"
            _add(in_raw, self._digests(
                f"select held._hash from {self.held_keys} as held where not exists ({changed} and changed._hash is not null)"
                f" and (exists ({changed}) or not exists (select 1 from {self.state_table} as kept"
                f" where {_same_key(self.entity, 'kept', 'held')}))"
            ), +1)
        self.warehouse.empty_table(self.held_keys)
        buckets = sorted(bucket for bucket in {*at_source, *in_raw} if at_source.get(bucket) != in_raw.get(bucket))
        self.warehouse.empty_table(self.live_keys)
        if buckets:
            chosen = f" and _hash % {KEY_BUCKETS} in ({', '.join(map(str, buckets))})"
            self.warehouse.execute(f"insert into {self.live_keys} ({self._key}, _hash) select {self._key}, _hash from {self._live(chosen)}")
        self.warehouse.refresh_statistics(self.live_keys)
        self.warehouse.empty_table(self.changed_keys)
        return buckets

    def fill_gone_keys(self, source_keys: str) -> None:
        """Fill `gone_keys` with the compared live keys (`live_keys`) that the table `source_keys`
        lacks: the keys the source lost, few on most days. A table with statistics of its own: as
        an anti-join inside the query over raw's versions, PostgreSQL misjudged its size and read
        a 107 MB scratch table of keys over 2,000 times (one day's order lines at 30,000
        customers: stopped after ten minutes); from this table it plans on the real count."""
        self.warehouse.empty_table(self.gone_keys)
        self.warehouse.execute(
            f"insert into {self.gone_keys} ({self._key}) select {self._key} from {self.live_keys} as live"
            f" where not exists (select 1 from {source_keys} as source where {_same_key(self.entity, 'source', 'live')})"
        )
        self.warehouse.refresh_statistics(self.gone_keys)

    def _live(self, condition: str) -> str:
        """raw's live keys (that meet `condition`, on _hash) as a subquery."""
        return (
            f"(select {self._key}, _hash from {self.state_table} as kept where not exists (select 1 from"
            f" {self.changed_keys} as changed where {_same_key(self.entity, 'changed', 'kept')}){condition}"
            f" union all select {self._key}, _hash from {self.changed_keys} where _hash is not null{condition}) as live"
        )

    def _keep_until(self, covers_before: dt.date, logical_date: dt.date) -> None:
        """Fold the raw rows loaded from `covers_before` to the day before `logical_date` into the
        state: rows of the reconciliation's own date are left out, as a rerun of it replaces them."""
        if covers_before >= logical_date:
            return
        folded = (f"exists (select 1 from {self.entity.raw_table} as changed where changed._batch_date >= ?"
                  f" and changed._batch_date < ? and {_same_key(self.entity, 'changed', 'kept')})")
        window = (covers_before, logical_date)
        digests = dict(self._stored_digests())
        _add(digests, self._digests(f"select kept._hash from {self.state_table} as kept where {folded}", window), -1)
        self.warehouse.delete_rows(self.state_table, folded, window, alias="kept")
        self._insert_live(self.state_table, covers_before, logical_date, live_only=True)
        _add(digests, self._digests(f"select kept._hash from {self.state_table} as kept where {folded}", window), +1)
        self._store_digests(digests)

    def _insert_live(self, table: str, since: dt.date | None, before: dt.date, *, live_only: bool) -> None:
        """Insert into `table` the keys of the raw rows loaded from `since` (or ever) until before
        `before`, with their hash when their latest version is live, else (unless `live_only`) a
        null hash. Raw versions of a SQL table are delivered on their load's date, so a key's latest
        version among later loads is its latest of all."""
        entity = self.entity
        condition, params = "_batch_date < ?", [before]
        if since is not None:
            condition += " and _batch_date >= ?"
            params.append(since)
        live = f"case when not coalesce(_deleted, false) then {self._hash} end"
        self.warehouse.execute(
            f"insert into {table} ({self._key}, _hash) select {self._key}, _hash from ("
            f"select {self._key}, {live} as _hash, row_number() over (partition by {self._key}"
            f" order by {LATEST_VERSION_FIRST}) as _recency"
            f" from {entity.raw_table} where {condition}) as latest"
            f" where _recency = 1{' and _hash is not null' if live_only else ''}",
            params,
        )

    def _digests(self, hashes: str, params: Sequence = ()) -> Digests:
        """The bucket digests of the query `hashes` (one column, `_hash`)."""
        return _as_digests(self.warehouse.fetchall(f"select {digest_columns_sql('_hash')} from ({hashes}) as hashes group by 1", params))

    def _stored_digests(self) -> Digests:
        if self._kept_digests is None:
            self._kept_digests = _as_digests(self.warehouse.fetchall(f"select {', '.join(_DIGEST_COLUMNS)} from {self.state_digests}"))
        return self._kept_digests

    def _store_digests(self, digests: Digests) -> None:
        """Keep `digests` as the state's (65,536 rows at most: rewritten whole)."""
        import pyarrow as pa

        self._kept_digests = digests
        self.warehouse.empty_table(self.state_digests)
        buckets = sorted(digests)
        columns = [buckets, *([digests[bucket][position] for bucket in buckets] for position in range(3))]
        self.warehouse.append_arrow(self.state_digests, pa.table({
            name: pa.array(values, pa.int64()) for name, values in zip(_DIGEST_COLUMNS, columns)
        }))

    def _audit_fingerprint(self, before: dt.date) -> str:
        """What changes when raw's rows loaded before `before` change: every load and
        reconciliation of a date writes its audit row anew, and a full refresh removes them."""
        rows, last = self.warehouse.fetchall(
            f"select count(*), max(_loaded_at) from {self.audit_table} where system = ? and entity = ? and _batch_date < ?",
            (self.entity.system.name, self.entity.name, before),
        )[0]
        return f"{rows}:{last}"


def live_key_state(warehouse: "Warehouse", entity: Entity, logical_date: dt.date, audit_table: str) -> KeyState | None:
    """The key state of `entity` filled for `logical_date`; None when the table is compared whole
    (a key that is not all integers, or a date before the one the state covers)."""
    if not is_bucketed(entity):
        return None
    state = KeyState(warehouse, entity, audit_table)
    return state if state.load_changes(logical_date) else None


def _as_digests(rows: Sequence[tuple]) -> Digests:
    return {int(bucket): (int(count), int(first), int(second)) for bucket, count, first, second in rows}


def _add(digests: Digests, change: Digests, sign: int) -> None:
    """Add (sign +1) or take away (-1) the keys digested in `change`: every part of a digest is a
    sum over its keys. A bucket left without keys is dropped, as a digest of no keys is absent."""
    for bucket, parts in change.items():
        total = tuple(held + sign * moved for held, moved in zip(digests.get(bucket, (0, 0, 0)), parts))
        if total[0]:
            digests[bucket] = total
        else:
            digests.pop(bucket, None)


def source_digests(source: "SqlSource", entity: Entity, visible: str, params: Sequence) -> Digests:
    """The bucket digests of the source's keys that meet `visible`, computed by the source."""
    return _as_digests(source.bucket_digests(entity.name, source_key_hash(source, entity), digest_columns_sql("_hash"), visible, params))


def _same_key(entity: Entity, left: str, right: str) -> str:
    return " and ".join(f"{left}.{name} = {right}.{name}" for name in entity.primary_key)

