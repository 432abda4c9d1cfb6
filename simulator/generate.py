"""`crmw simulate`: write the three source systems and their planted truth, day by day.

Layout of the output folder (the same layout a team's own exports must meet):

    sales.sqlite                         the sales database (unless --sales-db names another)
    crm/<YYYY-MM-DD>/<entity>.csv        CRM drops: customers, interactions, campaigns, campaign_members
    service/<YYYY-MM-DD>/tickets.jsonl   service-desk export of the tickets that changed that day
    truth/                               what the pipeline must rediscover; never read by it
                                         (ticket_comments.csv: the cause of each satisfaction comment)
    .simulator/                          the simulator's own state, for --append-day
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import yaml

from simulator import engine, sources
from simulator.model import CHURN_EFFECTS, PERSONAS, build_world

log = logging.getLogger(__name__)

CONTRACT_PATH = Path(__file__).resolve().parents[1] / "extract_load" / "source_contract.yml"
STATE_DIR = ".simulator"
EXTRA_COLUMN = "preferred_language"
_CANCEL_SHARE = 0.02
_PROJECTION_CELLS = 4_000_000  # customers × days projected at once by expected_spend (32 MB an array)


class SimulationError(ValueError):
    """Bad simulation arguments; the message names the argument and what was expected."""


@dataclass(frozen=True)
class SimulationSettings:
    customers: int
    start: dt.date
    days: int
    seed: int
    out: Path
    sales_db: str | None = None
    dirty_rate: float = 0.01
    new_column_day: dt.date | None = None

    def check(self) -> None:
        if self.customers <= 0:
            raise SimulationError(f"--customers {self.customers}: expected a positive number of customers")
        if self.days <= 0:
            raise SimulationError(f"--days {self.days}: expected a positive number of days")
        if not 0 <= self.dirty_rate <= 0.2:
            raise SimulationError(f"--dirty-rate {self.dirty_rate}: expected a share between 0 and 0.2")
        if self.sales_db and not self.sales_db.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
            raise SimulationError(f"--sales-db {self.sales_db!r}: expected sqlite:///path or postgresql://user:password@host/db")
        if self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            raise SimulationError(
                f"--out {self.out}: expected an empty or new folder (it holds files already; use --append-day to extend it)"
            )


@cache
def _contract() -> dict[str, dict[str, str]]:
    """Entity → {column: contract type}, in the contract's column order."""
    document = yaml.safe_load(CONTRACT_PATH.read_text(encoding="utf-8"))
    return {name: {column: spec["type"] for column, spec in entity["columns"].items()} for name, entity in document["entities"].items()}


def _contract_columns() -> dict[str, list[str]]:
    return {name: list(columns) for name, columns in _contract().items()}


@cache
def _contract_cursors() -> dict[str, str]:
    """Entity → the column its changes move, for entities that name one."""
    document = yaml.safe_load(CONTRACT_PATH.read_text(encoding="utf-8"))
    return {name: entity["cursor"] for name, entity in document["entities"].items() if "cursor" in entity}


def _settings_file(out: Path) -> Path:
    return out / STATE_DIR / "settings.json"


def simulate(settings: SimulationSettings, progress: Callable[[str], None] | None = None) -> dict[str, int]:
    """Write `settings.days` days from `settings.start` into the new folder `settings.out`.

    Everything is written into a scratch folder first and moved into place at the end: a failed
    run leaves nothing half-written. Returns the rows written per source entity.
    """
    settings.check()
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".simulate-", dir=settings.out.parent))
    sales_db = settings.sales_db or f"sqlite:///{scratch / 'sales.sqlite'}"
    try:
        (scratch / STATE_DIR).mkdir()
        stored = {
            "seed": settings.seed,
            "start": settings.start.isoformat(),
            "customers": settings.customers,
            "dirty_rate": settings.dirty_rate,
            "sales_db": settings.sales_db,
            "new_column_day": settings.new_column_day.isoformat() if settings.new_column_day else None,
        }
        _settings_file(scratch).write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
        state = engine.State(seed=settings.seed, start=settings.start, base_customers=settings.customers)
        world = build_world(settings.seed)
        with sources.SalesDatabase(sales_db) as db:
            db.create(_contract(), _contract_cursors())
            sources.write_products(db, world.products, settings.start)
            _write_static_truth(scratch / "truth", world)
            counts: dict[str, int] = {}
            with sources.Writer() as writer:
                for day in range(settings.days):
                    _add(counts, _simulate_day(scratch, state, world, day, db, writer, stored))
                    _report(progress, state, day, settings.days)
                # Computed while the last days are still being written.
                _write_final_truth(scratch / "truth", state, world)
                state.save(scratch / STATE_DIR)
        if settings.out.exists():
            settings.out.rmdir()
        scratch.rename(settings.out)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return counts


def append_day(out: Path, date: dt.date, progress: Callable[[str], None] | None = None) -> dict[str, int]:
    """Add the day after the last one written to an existing simulation in `out`."""
    if not _settings_file(out).exists():
        raise SimulationError(f"--out {out}: expected a folder written by 'crmw simulate' (no {STATE_DIR}/ in it)")
    stored = json.loads(_settings_file(out).read_text())
    state = engine.State.load(out / STATE_DIR)
    expected = state.date_of(state.days_done)
    if date != expected:
        raise SimulationError(f"--append-day {date}: expected {expected}, the day after the last one written")
    world = build_world(state.seed)
    sales_db = stored["sales_db"] or f"sqlite:///{out / 'sales.sqlite'}"
    with sources.SalesDatabase(sales_db) as db, sources.Writer() as writer:
        counts = _simulate_day(out, state, world, state.days_done, db, writer, stored)
    _write_final_truth(out / "truth", state, world)
    state.save(out / STATE_DIR)
    _report(progress, state, state.days_done - 1, state.days_done)
    return counts


def _add(total: dict[str, int], counts: dict[str, int]) -> None:
    for key, value in counts.items():
        total[key] = total.get(key, 0) + value


def _report(progress, state: engine.State, day: int, days: int) -> None:
    if progress and (day + 1 == days or (day + 1) % 30 == 0):
        progress(f"simulate: day {day + 1}/{days} ({state.date_of(day)}): {state.next_person - 1:,} customers, {state.next_order - 1:,} orders")


def _simulate_day(
    out: Path, state: engine.State, world, day: int, db: sources.SalesDatabase, writer: sources.Writer, stored: dict
) -> dict[str, int]:
    """Simulate `day` and hand its writes to `writer` (carried out in order, maybe later)."""
    records = engine.step(state, world, day)
    rng = np.random.default_rng([state.seed, 11, day + 10_000])
    rate = float(stored["dirty_rate"])
    defects = sources.Defects(records.date, [])
    columns = _contract_columns()
    drift_day = stored.get("new_column_day")
    extra = EXTRA_COLUMN if drift_day and records.date >= dt.date.fromisoformat(drift_day) else None
    identities = sources.write_sales(db, records, rng, rate, defects, state, writer)
    identities += sources.write_crm(out, records, columns, rng, rate, defects, state, extra, writer)
    identities += sources.write_service(out, records, columns["tickets"], rng, rate, defects, writer)
    truth = out / "truth"
    writer.append_csv(truth / "identities.csv", ["system", "entity", "record_key", "person_id"], identities)
    writer.append_csv(truth / "defects.csv", sources.DEFECT_COLUMNS, sources.csv_text(defects.rows))
    writer.append_csv(truth / "churn_events.csv", ["person_id", "churn_date"], sources.csv_text(records.churned))
    # The cause each satisfaction comment was written about, on the day it was first shown.
    writer.append_csv(truth / "ticket_comments.csv", ["ticket_id", "person_id", "cause", "comment_date"],
                      sources.csv_text(records.tickets.comment_causes))
    return {
        "orders": engine.row_count(records.orders),
        "order_lines": engine.row_count(records.order_lines),
        "customers": engine.row_count(records.customers),
        "tickets": len(records.tickets),
        "interactions": engine.row_count(records.interactions),
        "defects": len(defects.rows),
    }


def _write_static_truth(truth: Path, world) -> None:
    truth.mkdir(parents=True, exist_ok=True)
    world.persona_table().to_csv(truth / "personas.csv", index=False, lineterminator="\n")
    world.rules_table().to_csv(truth / "rules.csv", index=False, lineterminator="\n")
    pd.DataFrame(
        [
            {
                "persona": p.name,
                "control_conversion": p.campaign_base_conversion,
                "treatment_conversion": p.campaign_base_conversion + p.campaign_uplift,
                "uplift": p.campaign_uplift,
            }
            for p in PERSONAS
        ]
    ).to_csv(truth / "campaign_uplift.csv", index=False, lineterminator="\n")
    model = {
        "hazard": "daily churn probability = persona baseline * exp(sum(effect * factor)), capped at 0.5",
        "baseline_by_persona": {p.name: p.churn_hazard for p in PERSONAS},
        "effects": CHURN_EFFECTS,
        "factors": {
            "lost_engagement": "1 - engagement; a drifting customer's engagement halves every drift_days after its drift starts",
            "bad_service_experiences": "slow (first reply after the SLA) or unresolved tickets, each counted once, decaying with a 90-day time constant",
            "price_sensitivity": "per-customer 0..1 (bargain hunters +0.3)",
        },
        "churned_customers": "buy nothing from their churn date on",
    }
    (truth / "churn_model.json").write_text(json.dumps(model, indent=1, sort_keys=True) + "\n")


def expected_spend(state: engine.State, world, horizons: list[int]) -> list[np.ndarray]:
    """Each customer's true expected spend (kept orders' net value) over the next `horizon`
    days after the last simulated day, from the generating model, for each of the ascending
    `horizons` (one projection: a longer horizon carries on from the shorter one's sums)."""
    customers = state.customers
    last = state.days_done - 1
    value = engine.expected_order_value(world)
    # The churned expect nothing: only the alive are projected (each customer on its own).
    alive = np.flatnonzero(customers["churn_day"] < 0)
    personas = customers["persona"][alive]
    kept = 1 - np.array([p.return_rate for p in PERSONAS])[personas] - _CANCEL_SHARE * 0.9
    rate = np.array([p.orders_per_day for p in PERSONAS])[personas] * customers["rate_multiplier"][alive]
    total = np.zeros(len(alive))
    survival = np.ones(len(alive))
    projected = {name: customers[name][alive] for name in ("persona", "drift_start", "price_sensitivity")}
    bad_service = customers["bad_service"][alive]
    # Whole blocks of days at once (a row per day), in blocks small enough to bound memory.
    # cumprod and cumsum accumulate row after row, so the sums round exactly as a day-by-day loop.
    block = max(1, _PROJECTION_CELLS // max(len(alive), 1))
    spends, first = [], 1
    for horizon in horizons:
        while first <= horizon:
            offsets = np.arange(first, min(first + block, horizon + 1))[:, None]
            decay = np.array([np.exp(-offset / engine.BAD_SERVICE_MEMORY_DAYS) for offset in offsets[:, 0].tolist()])
            projected["bad_service"] = bad_service * decay[:, None]
            survivals = np.cumprod(np.vstack([survival, 1 - engine.churn_hazard(projected, last + offsets)]), axis=0)[1:]
            terms = survivals * rate * engine.engagement(projected, last + offsets) * value[personas] * kept
            total = np.cumsum(np.vstack([total, terms]), axis=0)[-1]
            survival = survivals[-1]
            first += len(offsets)
        spends.append(np.zeros(len(customers)))
        spends[-1][alive] = total.round(2)
    return spends


def _write_final_truth(truth: Path, state: engine.State, world) -> None:
    customers = state.customers
    as_of = state.date_of(state.days_done - 1)
    frame = pd.DataFrame(
        {
            "person_id": customers["person_id"],
            "crm_id": customers["crm_id"],
            "persona": np.array([p.name for p in PERSONAS])[customers["persona"]],
            "signup_date": state.iso_dates(customers["signup_day"]),
            "churn_date": np.where(customers["churn_day"] >= 0, state.iso_dates(customers["churn_day"]), ""),
            "price_sensitivity": customers["price_sensitivity"].round(4),
            "bad_service_score": customers["bad_service"].round(4),
            "engagement": engine.engagement(customers, state.days_done - 1).round(4),
            "referred_by": customers["referred_by"],
            "influence": customers["influence"].round(4),
            "as_of_date": as_of.isoformat(),
            **dict(zip(["expected_spend_90d", "expected_spend_365d"], expected_spend(state, world, [90, 365]))),
        }
    )
    frame.to_csv(truth / "customers.csv", index=False, lineterminator="\n")


def print_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

