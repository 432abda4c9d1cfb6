"""Generate the three source systems for a span of days.

This is the minimal generator of the foundation: customers who sign up, buy and open tickets,
with orders updated in place and tickets re-exported when they change. Personas, planted rules,
churn, dirty data and daily appends come with the simulator proper.
"""

from __future__ import annotations

import csv
import itertools
import datetime as dt
import json
import logging
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

log = logging.getLogger(__name__)

CONTRACT_PATH = Path(__file__).resolve().parents[1] / "extract_load" / "source_contract.yml"

_CATEGORIES = {
    "grocery": ["dairy", "bakery", "produce"],
    "household": ["cleaning", "paper"],
    "beauty": ["skin", "hair"],
    "electronics": ["audio", "accessories"],
    "home": ["kitchen", "decor"],
    "sports": ["outdoor", "fitness"],
}
_FIRST_NAMES = ["ana", "ben", "carla", "dev", "emma", "farid", "gina", "hugo", "iris", "jon", "kira", "leo"]
_LAST_NAMES = ["smith", "garcia", "nguyen", "muller", "rossi", "kowalski", "silva", "dubois", "khan", "berg"]
_CITIES = [("Lisbon", "PT"), ("Berlin", "DE"), ("Lyon", "FR"), ("Madrid", "ES"), ("Milan", "IT")]
_ACQUISITION = ["organic", "paid_search", "social", "referral", "store"]
_TIERS = ["bronze", "silver", "gold"]
_TICKET_CATEGORIES = ["delivery", "billing", "product", "account"]
_PRIORITIES = ["low", "normal", "high", "urgent"]


class SimulationError(ValueError):
    """Bad simulation arguments; the message names the argument and what was expected."""


@dataclass(frozen=True)
class SimulationSettings:
    customers: int
    start: dt.date
    days: int
    seed: int
    out: Path

    def check(self) -> None:
        if self.customers <= 0:
            raise SimulationError(f"--customers {self.customers}: expected a positive number of customers")
        if self.days <= 0:
            raise SimulationError(f"--days {self.days}: expected a positive number of days")
        if self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            raise SimulationError(f"--out {self.out}: expected an empty or new folder (it holds files already)")


def _contract_columns() -> dict[str, list[str]]:
    document = yaml.safe_load(CONTRACT_PATH.read_text(encoding="utf-8"))
    return {name: list(spec["columns"]) for name, spec in document["entities"].items()}


def _timestamp(day: dt.date, seconds: float) -> str:
    moment = dt.datetime.combine(day, dt.time()) + dt.timedelta(seconds=int(seconds))
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def simulate(settings: SimulationSettings) -> dict[str, int]:
    """Write all sources for `settings.days` days from `settings.start` into `settings.out`.

    Output is written to a scratch folder first and moved into place at the end, so a failed
    run leaves nothing half-written. Returns the number of rows written per entity.
    """
    settings.check()
    columns = _contract_columns()
    rng = np.random.default_rng(settings.seed)
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".simulate-", dir=settings.out.parent))
    try:
        counts = _write_sources(settings, columns, rng, scratch)
        if settings.out.exists():
            settings.out.rmdir()
        scratch.rename(settings.out)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return counts


def _write_sources(
    settings: SimulationSettings, columns: dict[str, list[str]], rng: np.random.Generator, out: Path
) -> dict[str, int]:
    days = [settings.start + dt.timedelta(days=offset) for offset in range(settings.days)]
    last_day = days[-1]

    products = []
    for index in range(60):
        category = list(_CATEGORIES)[index % len(_CATEGORIES)]
        price = round(float(rng.lognormal(2.5, 0.7)), 2)
        products.append(
            {
                "sku": f"SKU-{index + 1:04d}",
                "name": f"{category} item {index + 1}",
                "category": category,
                "subcategory": _CATEGORIES[category][index % len(_CATEGORIES[category])],
                "list_price": price,
                "unit_cost": round(price * float(rng.uniform(0.4, 0.8)), 2),
                "updated_at": _timestamp(settings.start, 0),
            }
        )
    popularity = rng.zipf(1.6, size=len(products)).astype(float)
    popularity /= popularity.sum()

    # Most customers exist before the first day (the first CRM drop is a full export); the rest
    # sign up during the span and appear in the drop of their signup day.
    customers = []
    for index in range(settings.customers):
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        existing = rng.random() < 0.6
        signup = settings.start - dt.timedelta(days=int(rng.integers(1, 700))) if existing else days[int(rng.integers(0, len(days)))]
        city, country = _CITIES[int(rng.integers(0, len(_CITIES)))]
        birth = dt.date(1950, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365 * 50)))
        customers.append(
            {
                "crm_id": f"C{index + 1:07d}",
                "first_name": first.title(),
                "last_name": last.title(),
                "email": f"{first}.{last}.{index + 1}@example.com",
                "phone": f"+351 9{int(rng.integers(10_000_000, 99_999_999))}",
                "birth_date": birth.isoformat(),
                "gender": str(rng.choice(["female", "male", "unknown"])),
                "city": city,
                "country": country,
                "signup_date": signup.isoformat(),
                "acquisition_channel": str(rng.choice(_ACQUISITION)),
                "loyalty_tier": str(rng.choice(_TIERS, p=[0.7, 0.22, 0.08])),
                "marketing_opt_in": "true" if rng.random() < 0.55 else "false",
                "referred_by": "",
                "modified_at": _timestamp(max(signup, settings.start), rng.uniform(8 * 3600, 18 * 3600)),
                "_rate": float(rng.gamma(1.2, 0.02)),
                "_first_day": max(signup, settings.start),
            }
        )

    orders, lines, crm_drops, tickets = [], [], {day: [] for day in days}, {day: [] for day in days}
    ticket_ids = itertools.count(1)
    for customer in customers:
        crm_drops[customer["_first_day"]].append(customer)
        if rng.random() < 0.05:
            # A loyalty-tier change re-exports the contact on the day it happens.
            change_day = days[int(rng.integers(0, len(days)))]
            if change_day > customer["_first_day"]:
                crm_drops[change_day].append(
                    {**customer, "loyalty_tier": "gold", "modified_at": _timestamp(change_day, 43_200)}
                )
    for day in days:
        for customer in customers:
            if day < customer["_first_day"]:
                continue
            for _ in range(int(rng.poisson(customer["_rate"]))):
                order_id = len(orders) + 1
                created = _timestamp(day, rng.uniform(7 * 3600, 22 * 3600))
                status, updated = "completed", created
                roll = rng.random()
                if roll < 0.04:
                    status = "cancelled"
                elif roll < 0.08:
                    later = min(day + dt.timedelta(days=int(rng.integers(2, 10))), last_day)
                    status, updated = "returned", _timestamp(later, 50_000)
                channel = str(rng.choice(["web", "store", "phone"], p=[0.6, 0.3, 0.1]))
                orders.append(
                    {
                        "order_id": order_id,
                        "customer_email": customer["email"],
                        "crm_id": customer["crm_id"] if rng.random() < 0.7 else None,
                        "channel": channel,
                        "store_id": f"S{int(rng.integers(1, 6)):02d}" if channel == "store" else None,
                        "status": status,
                        "created_at": created,
                        "updated_at": updated,
                    }
                )
                skus = rng.choice(len(products), size=int(rng.integers(1, 5)), replace=False, p=popularity)
                for line_number, sku_index in enumerate(sorted(skus), start=1):
                    product = products[int(sku_index)]
                    quantity = int(rng.integers(1, 4))
                    discount = round(product["list_price"] * quantity * 0.1, 2) if rng.random() < 0.2 else 0.0
                    lines.append(
                        {
                            "order_id": order_id,
                            "line_number": line_number,
                            "sku": product["sku"],
                            "quantity": quantity,
                            "unit_price": product["list_price"],
                            "discount": discount,
                            "updated_at": created,
                        }
                    )
            if rng.random() < 0.004:
                _open_ticket(rng, customer, day, last_day, next(ticket_ids), tickets)

    _write_sales_db(out / "sales.sqlite", columns, products, orders, lines)
    for day, records in crm_drops.items():
        _write_csv(out / "crm" / day.isoformat() / "customers.csv", columns["customers"], records)
    for day, records in tickets.items():
        _write_jsonl(out / "service" / day.isoformat() / "tickets.jsonl", columns["tickets"], records)
    return {
        "products": len(products),
        "orders": len(orders),
        "order_lines": len(lines),
        "customers": sum(len(records) for records in crm_drops.values()),
        "tickets": sum(len(records) for records in tickets.values()),
    }


def _open_ticket(
    rng: np.random.Generator,
    customer: dict,
    day: dt.date,
    last_day: dt.date,
    ticket_id: int,
    exports: dict[dt.date, list[dict]],
) -> None:
    """A ticket is exported the day it opens and again the day it is solved."""
    opened = rng.uniform(8 * 3600, 17 * 3600)
    reply_after = float(rng.exponential(4 * 3600))
    ticket = {
        "ticket_id": ticket_id,
        "requester_email": customer["email"],
        "channel": str(rng.choice(["email", "phone", "chat", "web"])),
        "category": str(rng.choice(_TICKET_CATEGORIES)),
        "priority": str(rng.choice(_PRIORITIES, p=[0.3, 0.45, 0.2, 0.05])),
        "status": "open",
        "created_at": _timestamp(day, opened),
        "updated_at": _timestamp(day, min(opened + reply_after, 86_399)),
        "first_reply_at": _timestamp(day, opened + reply_after) if opened + reply_after < 86_400 else None,
        "solved_at": None,
        "satisfaction_rating": None,
    }
    exports[day].append(ticket)
    solved_day = day + dt.timedelta(days=int(rng.integers(1, 5)))
    if solved_day <= last_day:
        solved = _timestamp(solved_day, 40_000)
        exports[solved_day].append(
            {
                **ticket,
                "status": "solved",
                "updated_at": solved,
                "first_reply_at": ticket["first_reply_at"] or _timestamp(solved_day, 30_000),
                "solved_at": solved,
                "satisfaction_rating": int(rng.integers(1, 6)),
            }
        )


def _write_sales_db(path: Path, columns: dict[str, list[str]], products, orders, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        for table, rows, key in (
            ("products", products, "sku"),
            ("orders", orders, "order_id"),
            ("order_lines", lines, "order_id, line_number"),
        ):
            names = columns[table]
            db.execute(f"create table {table} ({', '.join(names)}, primary key ({key}))")
            db.executemany(
                f"insert into {table} values ({', '.join('?' for _ in names)})",
                [tuple(row[name] for name in names) for row in rows],
            )
    db.close()  # the context manager commits but does not close


def _write_csv(path: Path, names: list[str], records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(names)
        writer.writerows([[record[name] for name in names] for record in records])


def _write_jsonl(path: Path, names: list[str], records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps({name: record[name] for name in names}) + "\n")
