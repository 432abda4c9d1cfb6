"""The simulation itself: customers living day by day in the world of `model`.

`step(state, day)` advances the world one day and returns what the source systems record that
day. All randomness of a day comes from a generator seeded by (seed, day), and everything a later
day needs is kept in `State`, saved between runs: so simulating 3 days at once, or 1 day and then
appending 2, does exactly the same work in the same order.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from simulator.model import (
    BAD_SERVICE_MEMORY_DAYS,
    CATEGORY_NAMES,
    CHANNELS,
    CHURN_EFFECTS,
    PERSONAS,
    World,
)

# Text the customer table holds is kept in object arrays: every customer's cell refers to one
# shared string (a numpy string array turned into objects makes a string per customer).
_FIRST = np.array("ana ben carla dev emma farid gina hugo iris jon kira leo mia nils olga paulo rui sara tomas uma vera yusuf zoe".split(), dtype=object)
_LAST = np.array("smith garcia nguyen muller rossi kowalski silva dubois khan berg costa novak jensen ortiz weber".split(), dtype=object)
_FIRST_NAMES, _LAST_NAMES = (np.array([name.capitalize() for name in names], dtype=object) for names in (_FIRST, _LAST))
_CITIES = np.array(["Lisbon", "Porto", "Berlin", "Hamburg", "Lyon", "Paris", "Madrid", "Milan", "Warsaw", "Vienna"], dtype=object)
_COUNTRIES = np.array(["PT", "PT", "DE", "DE", "FR", "FR", "ES", "IT", "PL", "AT"], dtype=object)
_GENDERS = np.array(["female", "male", "unknown"], dtype=object)
_DOMAINS = np.array(["example.com", "mail.example.org", "inbox.example.net"], dtype=object)
_ACQUISITION = np.array(["organic", "paid_search", "social", "referral", "store", "partner"], dtype=object)
_TIERS = np.array(["bronze", "silver", "gold", "platinum"], dtype=object)
_TIER_SPEND = [300, 1000, 3000]  # the spend that reaches each tier above the first
_TICKET_CATEGORIES = np.array(["delivery", "billing", "product", "returns", "account"])
_TICKET_CHANNELS = np.array(["email", "phone", "chat", "web"])
_PRIORITIES = np.array(["low", "normal", "high", "urgent"])
_SLA_HOURS = np.array([48.0, 24.0, 8.0, 2.0])  # first-reply target per priority
_INTERACTION_TYPES = np.array(["call", "email", "meeting", "visit"])
_INTERACTION_OUTCOMES = np.array(["no_answer", "information", "complaint", "purchase_intent", "resolved"])
_CAMPAIGN_CHANNELS = np.array(["email", "sms", "push"])
_STORES = np.array([f"S{number:03d}" for number in range(40)], dtype=object)  # store ids by number
PERSONA_COUNT = len(PERSONAS)
DAILY_GROWTH = 0.0015  # new customers per day, as a share of the initial base
QUOTA_BLOCK = 100  # personas are dealt in blocks of 100 so every prefix keeps the target shares

_persona = {name: np.array([getattr(p, name) for p in PERSONAS], dtype=float) for name in (
    "orders_per_day", "extra_items", "discount_share", "return_rate", "churn_hazard", "drift_days",
    "tickets_per_day", "interactions_per_day", "campaign_base_conversion", "campaign_uplift",
)}
_persona_channels = np.cumsum(np.array([p.channel_weights for p in PERSONAS]), axis=1)
_persona_categories = np.array([p.category_weights for p in PERSONAS], dtype=float)
_persona_categories = np.cumsum(_persona_categories / _persona_categories.sum(axis=1, keepdims=True), axis=1)


def day_rng(seed: int, day: int) -> np.random.Generator:
    return np.random.default_rng([seed, 7, day + 10_000])


def _choose(rng: np.random.Generator, cumulative: np.ndarray) -> np.ndarray:
    """One category index per row of `cumulative` (rows of cumulative probabilities)."""
    draws = rng.random(len(cumulative))[:, None]
    return np.minimum((draws > cumulative).sum(axis=1), cumulative.shape[1] - 1)


# "HH:MM:SS" of every second of a day: looking a time of day up beats printing it.
_CLOCK = np.array([f"{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}" for second in range(86_400)], dtype=object)


def _timestamps(day_date: dt.date, seconds: np.ndarray) -> np.ndarray:
    """"YYYY-MM-DD HH:MM:SS" (as source systems print timestamps, sorting as text) of `seconds`
    after the start of `day_date`, as Python strings. A day's timestamps share a handful of
    dates: each date is printed once and joined to the looked-up time of day."""
    if not len(seconds):
        return np.array([], dtype=object)
    days, time_of_day = np.divmod(seconds, 86_400)
    distinct_days, day_positions = np.unique(days, return_inverse=True)
    dates = np.array([f"{day_date + dt.timedelta(days=int(day))} " for day in distinct_days.tolist()], dtype=object)
    return dates[day_positions] + _CLOCK[time_of_day]


class CustomerTable:
    """The customer base as one numpy array per column, with room to spare at the end.

    The base grows every day and every day reads and updates a few columns of it: appending into
    spare capacity copies nothing, and plain arrays spare the per-operation cost of a DataFrame.
    `table[name]` is a view of the filled part, so updating it in place updates the table.
    """

    def __init__(self, columns: dict[str, np.ndarray] | None = None) -> None:
        self._arrays: dict[str, np.ndarray] = {}
        self._size = 0
        if columns:
            self.append(columns)

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name][: self._size]

    def __setitem__(self, name: str, values: np.ndarray) -> None:
        self._arrays[name][: self._size] = values

    def append(self, columns: dict[str, np.ndarray]) -> None:
        if not self._arrays:
            self._arrays = {name: np.empty(0, dtype=values.dtype) for name, values in columns.items()}
        size = self._size + len(next(iter(columns.values())))
        capacity = len(next(iter(self._arrays.values())))
        if size > capacity:
            # Doubling the capacity: a person is copied a few times in all, not the whole base daily.
            for name, array in self._arrays.items():
                grown = np.empty(max(size, 2 * capacity), dtype=array.dtype)
                grown[: self._size] = array[: self._size]
                self._arrays[name] = grown
        for name, values in columns.items():
            self._arrays[name][self._size : size] = values
        self._size = size

    def rows(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        """The rows at `positions`, a copy, one array per column."""
        return {name: self[name][positions] for name in self._arrays}

    def to_frame(self) -> pd.DataFrame:
        return _frame({name: self[name].copy() for name in self._arrays})


def _frame(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """A DataFrame whose text columns are plain object columns: the constructor would make them
    Arrow strings, slow to build and slow to turn back into Python values row by row."""
    arrays = {name: values.astype(object) if values.dtype.kind == "U" else values for name, values in columns.items()}
    return pd.DataFrame({name: pd.Series(values, dtype=values.dtype, copy=False) for name, values in arrays.items()})


def row_count(table: dict[str, np.ndarray]) -> int:
    """The rows of a column table (one array per column; {} holds none)."""
    return len(next(iter(table.values()))) if table else 0


def concat_rows(table: dict[str, np.ndarray], rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A column table with `rows` (a table with the same columns) after its own."""
    return {name: np.concatenate([table[name], values]) for name, values in rows.items()} if table else rows


def _split(table: dict[str, np.ndarray], taken: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The rows of a column table where `taken` holds, and the others."""
    return {name: values[taken] for name, values in table.items()}, {name: values[~taken] for name, values in table.items()}


@dataclass
class State:
    seed: int
    start: dt.date
    base_customers: int
    days_done: int = 0
    next_person: int = 1
    next_order: int = 1
    next_ticket: int = 1
    next_campaign: int = 1
    next_history: int = 1
    next_duplicate: int = 0
    customers: CustomerTable = field(default_factory=CustomerTable)
    # Pending plans, each a table of one array per column ({} before its first row):
    status_events: dict[str, np.ndarray] = field(default_factory=dict)  # order_id, day, status
    tickets: dict[str, np.ndarray] = field(default_factory=dict)  # tickets not closed yet
    conversions: dict[str, np.ndarray] = field(default_factory=dict)  # person_id, day, campaign_id
    members: dict[str, np.ndarray] = field(default_factory=dict)  # campaign members not exported yet

    _TABLES = ("status_events", "tickets", "conversions", "members")

    def date_of(self, day: int) -> dt.date:
        return self.start + dt.timedelta(days=day)

    def iso_dates(self, days: np.ndarray) -> np.ndarray:
        """YYYY-MM-DD of each simulated day number (as `date_of(day).isoformat()`)."""
        return (np.datetime64(self.start, "D") + np.asarray(days).astype("timedelta64[D]")).astype(str)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "seed": self.seed,
            "start": self.start.isoformat(),
            "base_customers": self.base_customers,
            "days_done": self.days_done,
            "next_person": self.next_person,
            "next_order": self.next_order,
            "next_ticket": self.next_ticket,
            "next_campaign": self.next_campaign,
            "next_history": self.next_history,
            "next_duplicate": self.next_duplicate,
        }
        (folder / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        self.customers.to_frame().to_pickle(folder / "customers.pkl")
        for name in self._TABLES:
            _frame(getattr(self, name)).to_pickle(folder / f"{name}.pkl")

    @classmethod
    def load(cls, folder: Path) -> "State":
        meta = json.loads((folder / "meta.json").read_text())
        state = cls(seed=meta["seed"], start=dt.date.fromisoformat(meta["start"]), base_customers=meta["base_customers"])
        for key in ("days_done", "next_person", "next_order", "next_ticket", "next_campaign", "next_history", "next_duplicate"):
            setattr(state, key, meta[key])
        customers = pd.read_pickle(folder / "customers.pkl")
        state.customers = CustomerTable({name: customers[name].to_numpy() for name in customers.columns})
        for name in cls._TABLES:
            frame = pd.read_pickle(folder / f"{name}.pkl")
            setattr(state, name, {column: frame[column].to_numpy() for column in frame.columns})
        return state


@dataclass
class DayRecords:
    """What the source systems record on one day (before dirty data is injected)."""

    date: dt.date
    # The sales rows as one array per column (name → array).
    orders: dict[str, np.ndarray]
    order_lines: dict[str, np.ndarray]
    payments: dict[str, np.ndarray]
    status_changes: dict[str, np.ndarray]  # order_id, status, changed_at (updates in place + history)
    customers: dict[str, np.ndarray]  # the rows of State.customers exported today, plus signup_date and modified_at
    interactions: dict[str, np.ndarray]
    campaigns: dict[str, np.ndarray]
    campaign_members: dict[str, np.ndarray]  # {} when none is exported
    tickets: TicketSnapshots
    churned: list[list]  # person_id, churn_date


def new_customers(state: State, rng: np.random.Generator, count: int, day: int, existing: bool) -> None:
    """Add `count` people signing up on `day` (or, for the initial base, at some day before it)."""
    ids = np.arange(state.next_person, state.next_person + count)
    state.next_person += count
    personas = persona_of(state.seed, ids)
    first, last = rng.choice(len(_FIRST), count), rng.choice(len(_LAST), count)
    city = rng.integers(0, len(_CITIES), count)
    signup = (day - rng.integers(1, 730, count)) if existing else np.full(count, day)
    birth_days, birth_positions = np.unique(rng.integers(0, 365 * 60, count), return_inverse=True)
    birth = (np.datetime64("1945-01-01") + birth_days.astype("timedelta64[D]")).astype(str).astype(object)[birth_positions]
    drift = _persona["drift_days"][personas]
    customers = state.customers
    referred_by = np.full(count, "", dtype=object)
    if not existing and len(customers):
        # Referrals follow influence: a few referrers bring many of the referred customers.
        candidates = np.flatnonzero(customers["churn_day"] < 0)
        referred = rng.random(count) < 0.15
        if referred.any() and len(candidates):
            weights = customers["influence"][candidates]
            picks = rng.choice(len(candidates), int(referred.sum()), p=weights / weights.sum())
            referred_by[referred] = customers["crm_id"][candidates[picks]]
    columns = {
        "person_id": ids,
        "crm_id": [f"C{i:08d}" for i in ids],
        "persona": personas,
        "signup_day": signup,
        "first_name": _FIRST_NAMES[first],
        "last_name": _LAST_NAMES[last],
        "email": [f"{f}.{l}.{i}@{d}" for f, l, i, d in zip(_FIRST[first].tolist(), _LAST[last].tolist(), ids.tolist(), rng.choice(_DOMAINS, count).tolist())],
        "phone": [f"+{c} {n}" for c, n in zip(rng.choice(["351", "49", "33", "34", "39"], count), rng.integers(600_000_000, 999_999_999, count))],
        "birth_date": birth,
        "gender": rng.choice(_GENDERS, count, p=[0.49, 0.48, 0.03]),
        "city": _CITIES[city],
        "country": _COUNTRIES[city],
        "acquisition_channel": np.where(referred_by != "", "referral", rng.choice(_ACQUISITION, count)),
        "loyalty_tier": np.full(count, _TIERS[0], dtype=object),
        "tier_rank": np.zeros(count, dtype=np.int64),  # the position of loyalty_tier in _TIERS
        "marketing_opt_in": rng.random(count) < 0.6,
        "referred_by": referred_by,
        "rate_multiplier": rng.lognormal(-0.125, 0.5, count),
        "price_sensitivity": np.clip(rng.beta(2, 3, count) + 0.3 * (personas == 3), 0, 1),
        "influence": rng.pareto(1.2, count) + 0.05,
        "drift_start": np.where(drift > 0, np.maximum(signup, day) + rng.integers(0, 60, count), -1),
        "churn_day": np.full(count, -1),
        "bad_service": np.zeros(count),
        "orders": np.zeros(count, dtype=int),
        "spend": np.zeros(count),
        "uses_crm_id": rng.random(count) < 0.7,
        "modified_day": np.maximum(signup, day),
    }
    columns = {name: np.asarray(values) for name, values in columns.items()}
    # Text as Python strings in object arrays: fixed-width numpy strings would truncate updates.
    customers.append({name: values.astype(object) if values.dtype.kind == "U" else values for name, values in columns.items()})


def _positions(person_ids: np.ndarray) -> np.ndarray:
    """The table rows of these people, each once, in table order (person n is row n - 1)."""
    return np.unique(person_ids.astype(np.int64) - 1)


def persona_of(seed: int, person_ids: np.ndarray) -> np.ndarray:
    """Personas are dealt from shuffled blocks of QUOTA_BLOCK people with exact target counts,
    so the shares hold at any population size and whatever the day people sign up."""
    block = np.repeat(np.arange(PERSONA_COUNT), [round(p.share * QUOTA_BLOCK) for p in PERSONAS])
    numbers, blocks = np.unique((person_ids - 1) // QUOTA_BLOCK, return_inverse=True)
    deals = np.array([np.random.default_rng([seed, 3, number]).permutation(block) for number in numbers.tolist()], dtype=int)
    return deals.reshape(len(numbers), QUOTA_BLOCK)[blocks, (person_ids - 1) % QUOTA_BLOCK]


def engagement(customers, day: int | np.ndarray) -> np.ndarray:
    """1 while engaged; a drifter's engagement halves every `drift_days` after its drift starts.
    `customers` maps column names to arrays; `day` may be a column of days (one row per day)."""
    drift = _persona["drift_days"][customers["persona"]]
    start = customers["drift_start"]
    faded = np.ones(np.broadcast_shapes(np.shape(day), start.shape))
    # The power, the costly part, for the drifters alone (a sixth of the customers at most).
    drifting = np.flatnonzero((drift > 0) & (start >= 0))
    age = np.maximum(day - start[drifting], 0)
    faded[..., drifting] = 0.5 ** (age / drift[drifting])
    return faded


def churn_hazard(customers, day: int | np.ndarray, engaged: np.ndarray | None = None) -> np.ndarray:
    """Daily churn probability: persona baseline × exp(Σ effect × factor) (truth/churn_model.json).
    Arguments as for `engagement`, whose result `engaged` is when already worked out."""
    base = _persona["churn_hazard"][customers["persona"]]
    lifted = (
        CHURN_EFFECTS["lost_engagement"] * (1 - (engagement(customers, day) if engaged is None else engaged))
        + CHURN_EFFECTS["bad_service_experiences"] * customers["bad_service"]
        + CHURN_EFFECTS["price_sensitivity"] * customers["price_sensitivity"]
    )
    return np.minimum(base * np.exp(lifted), 0.5)


def expected_order_value(world: World) -> np.ndarray:
    """Mean net value of a kept order per persona, from the catalogue and the basket model."""
    products = world.products.set_index("sku")
    mean_quantity = 1.3
    values = []
    for index, persona in enumerate(PERSONAS):
        weights = np.diff(np.concatenate([[0.0], _persona_categories[index]]))
        category_price = []
        for category in CATEGORY_NAMES:
            skus, cumulative = world.regular_skus_by_category[category], world.cumulative_popularity_by_category[category]
            probabilities = np.diff(np.concatenate([[0.0], cumulative]))
            category_price.append(float((products.loc[skus, "list_price"].to_numpy() * probabilities).sum()))
        regular = (1 + persona.extra_items) * float(np.dot(weights, category_price))
        planted = sum(
            rule.p_a * products.loc[rule.antecedent, "list_price"] + rule.consequent_support * products.loc[rule.consequent, "list_price"]
            for rule in world.rules
        )
        discount = persona.discount_share * 0.2
        values.append((regular + planted) * mean_quantity * (1 - discount))
    return np.array(values)


def step(state: State, world: World, day: int) -> DayRecords:
    rng = day_rng(state.seed, day)
    date = state.date_of(day)
    # 1. Signups: the initial base exists before day 0; then a steady trickle of new people.
    known = len(state.customers)
    if day == 0:
        new_customers(state, rng, state.base_customers, day, existing=True)
    else:
        new_customers(state, rng, int(rng.poisson(state.base_customers * DAILY_GROWTH)), day, existing=False)
    customers = state.customers
    customers["bad_service"] *= np.exp(-1 / BAD_SERVICE_MEMORY_DAYS)

    # 2. Churn: a churned customer never buys again. Every row of the table gets a draw, but
    # hazards are worked out for the living alone (late in a long run, many are gone).
    alive = (customers["churn_day"] < 0) & (customers["signup_day"] <= day)
    living = np.flatnonzero(alive)
    draws = rng.random(len(customers))
    lives = {name: customers[name][living] for name in ("persona", "drift_start", "bad_service", "price_sensitivity")}
    engaged = engagement(lives, day)
    churns = draws[living] < churn_hazard(lives, day, engaged)
    churning = living[churns]
    customers["churn_day"][churning] = day
    alive[churning] = False
    churned = [[person_id, date.isoformat()] for person_id in customers["person_id"][churning].tolist()]

    # 3. Orders of alive customers (plus campaign conversions due today).
    index = living[~churns]
    personas = customers["persona"][index]
    weekly = 1.0 + 0.15 * np.sin(2 * np.pi * (date.weekday() - 2) / 7)
    rates = _persona["orders_per_day"][personas] * customers["rate_multiplier"][index]
    rates *= engaged[~churns] * weekly
    counts = rng.poisson(rates)
    buyers = np.repeat(index, counts)
    if state.conversions:
        due, state.conversions = _split(state.conversions, state.conversions["day"] == day)
        converting = _positions(due["person_id"])
        buyers = np.concatenate([buyers, converting[alive[converting]]])
    orders, lines, payments, new_events = _orders(state, world, rng, customers, buyers, day, date)
    state.status_events = concat_rows(state.status_events, new_events)

    # 4. Status changes due today: updated in place in the sales DB, logged in its history.
    due_events, state.status_events = _split(state.status_events, state.status_events["day"] == day)
    # Deleting a test order is dirty data, not the world: it takes no draw from the day's
    # generator, so the dirty rate never changes what customers do.
    changing = due_events["status"] != "__deleted__"
    changed_at = np.full(len(changing), None, dtype=object)
    changed_at[changing] = _timestamps(date, rng.integers(6 * 3600, 20 * 3600, int(changing.sum())))
    status_changes = {"order_id": due_events["order_id"], "status": due_events["status"], "changed_at": changed_at}

    # 5. Service desk, CRM activity and campaigns.
    tickets = _tickets(state, rng, customers, index, day, date)
    interactions = _interactions(rng, customers, index, day, date)
    campaigns, members = _campaigns(state, rng, customers, index, day, date)
    _crm_changes(rng, customers, index, day)
    exported = customers["modified_day"] == day
    exported[known:] = True  # everyone who signed up today
    exported = customers.rows(np.flatnonzero(exported))
    exported["signup_date"] = state.iso_dates(exported["signup_day"]).astype(object)
    count = len(exported["signup_date"])
    exported["modified_at"] = _timestamps(date, rng.integers(7 * 3600, 19 * 3600, count)) if count else np.array([], dtype=object)
    state.days_done = day + 1
    return DayRecords(
        date=date,
        orders=orders,
        order_lines=lines,
        payments=payments,
        status_changes=status_changes,
        customers=exported,
        interactions=interactions,
        campaigns=campaigns,
        campaign_members=members,
        tickets=tickets,
        churned=churned,
    )


def _orders(state, world, rng, customers, buyers, day, date):
    count = len(buyers)
    order_ids = np.arange(state.next_order, state.next_order + count)
    state.next_order += count
    personas = customers["persona"][buyers]
    channel = _choose(rng, _persona_channels[personas] / _persona_channels[personas][:, -1:])
    created_seconds = rng.integers(7 * 3600, 22 * 3600, count)
    created = _timestamps(date, created_seconds)
    # Regular items: category by persona, product by long-tail popularity within the category.
    sizes = 1 + rng.poisson(_persona["extra_items"][personas])
    line_order = np.repeat(np.arange(count), sizes)
    line_category = _choose(rng, _persona_categories[personas[line_order]])
    # Products are worked with as catalogue positions: their sku and price are then looked up
    # for all lines at once.
    catalogue = world.products["sku"].tolist()
    position = {sku: number for number, sku in enumerate(catalogue)}
    products = np.empty(len(line_order), dtype=np.int64)
    for category_index, category in enumerate(CATEGORY_NAMES):
        mask = line_category == category_index
        picks = np.searchsorted(world.cumulative_popularity_by_category[category], rng.random(int(mask.sum())))
        regular = np.array([position[sku] for sku in world.regular_skus_by_category[category].tolist()])
        products[mask] = regular[np.minimum(picks, len(regular) - 1)]
    # Planted rules: A with p_a; B with p_b_given_a if A is there, else p_b_without_a.
    extra_orders, extra_products = [], []
    for rule in world.rules:
        has_a = rng.random(count) < rule.p_a
        has_b = rng.random(count) < np.where(has_a, rule.p_b_given_a, rule.p_b_without_a)
        for mask, sku in ((has_a, rule.antecedent), (has_b, rule.consequent)):
            extra_orders.append(np.flatnonzero(mask))
            extra_products.append(np.full(int(mask.sum()), position[sku]))
    line_order = np.concatenate([line_order, *extra_orders])
    products = np.concatenate([products, *extra_products])
    arrangement = np.argsort(line_order, kind="stable")
    line_order, products = line_order[arrangement], products[arrangement]
    line_number = np.arange(len(line_order)) - np.searchsorted(line_order, line_order) + 1
    skus = np.array(catalogue, dtype=object)[products]
    prices = world.products["list_price"].to_numpy(dtype=float)[products]
    quantity = 1 + rng.poisson(0.3, len(line_order))
    discounted = rng.random(len(line_order)) < _persona["discount_share"][personas[line_order]]
    discount = np.where(discounted, np.round(prices * quantity * rng.uniform(0.1, 0.3, len(line_order)), 2), 0.0)
    lines = {
        "order_id": order_ids[line_order],
        "line_number": line_number,
        "sku": skus,
        "quantity": quantity,
        "unit_price": prices,
        "discount": discount,
        "updated_at": created[line_order],
    }
    net = np.bincount(line_order, weights=prices * quantity - discount, minlength=count).round(2)
    person = customers["person_id"][buyers]
    uses_crm = customers["uses_crm_id"][buyers]
    orders = {
        "order_id": order_ids,
        "customer_email": customers["email"][buyers],
        "crm_id": np.where(uses_crm, customers["crm_id"][buyers], None),
        "channel": np.array(CHANNELS)[channel],
        "store_id": np.where(channel == 1, _STORES[rng.integers(1, 40, count)], None),
        "status": np.where(channel == 1, "completed", "placed"),
        "created_at": created,
        "updated_at": created,
        "_person_id": person,
        "_net": net,
    }
    # The life of each order: shipped, completed, sometimes cancelled or returned later.
    roll = rng.random(count)
    returned = roll < _persona["return_rate"][personas]
    cancelled = (~returned) & (roll < _persona["return_rate"][personas] + 0.02) & (channel != 1)
    remote = channel != 1
    events = [
        (order_ids[cancelled], day + 1, "cancelled"),
        (order_ids[remote & ~cancelled], day + 1, "shipped"),
        (order_ids[remote & ~cancelled], day + 3, "completed"),
    ]
    return_delay = rng.integers(5, 15, count)
    events.append((order_ids[returned], day + np.where(remote, 3, 0)[returned] + return_delay[returned], "returned"))
    new_events = {
        "order_id": np.concatenate([ids for ids, _, _ in events]),
        "day": np.concatenate([np.broadcast_to(when, len(ids)) for ids, when, _ in events]),
        "status": np.concatenate([np.full(len(ids), status, dtype=object) for ids, _, status in events]),
    }
    methods = np.where(channel == 1, rng.choice(np.array(["card", "cash"]), count, p=[0.8, 0.2]), rng.choice(np.array(["card", "paypal", "gift_card"]), count, p=[0.7, 0.25, 0.05]))
    payments = {
        "payment_id": np.array([f"P{i}" for i in order_ids.tolist()], dtype=object),
        "order_id": order_ids,
        "method": methods,
        "amount": net,
        "paid_at": created,
    }
    kept = ~(returned | cancelled)
    np.add.at(customers["spend"], buyers[kept], net[kept])
    np.add.at(customers["orders"], buyers[kept], 1)
    return orders, lines, payments, new_events


def _tickets(state, rng, customers, index, day, date) -> TicketSnapshots:
    """Open new tickets, plan their lives, and return every ticket that changes today."""
    personas = customers["persona"][index]
    opening = index[rng.random(len(index)) < _persona["tickets_per_day"][personas]]
    count = len(opening)
    if count:
        ids = np.arange(state.next_ticket, state.next_ticket + count)
        state.next_ticket += count
        priority = rng.choice(len(_PRIORITIES), count, p=[0.3, 0.45, 0.2, 0.05])
        opened = rng.integers(8 * 3600, 18 * 3600, count)
        slow = rng.random(count) < 0.15
        reply_hours = np.where(slow, _SLA_HOURS[priority] * rng.uniform(1.2, 4, count), _SLA_HOURS[priority] * rng.uniform(0.05, 0.9, count))
        unresolved = rng.random(count) < 0.05
        reopened = (~unresolved) & (rng.random(count) < 0.06)
        solve_days = rng.integers(1, 6, count)
        bad = slow | unresolved
        rating = np.where(bad, rng.integers(1, 3, count), rng.integers(3, 6, count))
        new = {
            "ticket_id": ids,
            "person_id": customers["person_id"][opening],
            "requester_email": customers["email"][opening],
            "channel": rng.choice(_TICKET_CHANNELS, count),
            "category": rng.choice(_TICKET_CATEGORIES, count),
            "priority": _PRIORITIES[priority],
            "open_day": np.full(count, day),
            "opened_seconds": opened,
            "reply_seconds": opened + (reply_hours * 3600).astype(int),
            "solve_day": np.where(unresolved, -1, day + solve_days),
            "reopen_day": np.where(reopened, day + solve_days + 2, -1),
            "resolve_again_day": np.where(reopened, day + solve_days + 4, -1),
            "close_day": np.where(unresolved, -1, day + solve_days + np.where(reopened, 9, 4)),
            "rating": rating,
            "bad": bad,
        }
        new = {name: values.astype(object) if values.dtype.kind == "U" else values for name, values in new.items()}
        state.tickets = {name: np.concatenate([state.tickets[name], values]) for name, values in new.items()} if state.tickets else new
    tickets = state.tickets
    if not tickets:
        return _ticket_snapshots(tickets, day, state)
    reply_day = tickets["open_day"] + tickets["reply_seconds"] // 86_400
    event_days = [tickets["open_day"], reply_day, tickets["solve_day"], tickets["reopen_day"], tickets["resolve_again_day"], tickets["close_day"]]
    changing = np.zeros(len(reply_day), dtype=bool)
    for days in event_days:
        changing |= days == day
    # A bad experience counts against the customer once the ticket is solved (or left open a week).
    judged = tickets["bad"] & ((tickets["solve_day"] == day) | ((tickets["solve_day"] < 0) & (tickets["open_day"] + 7 == day)))
    if judged.any():
        customers["bad_service"][_positions(tickets["person_id"][judged])] += 1
    snapshots = _ticket_snapshots({name: values[changing] for name, values in tickets.items()}, day, state)
    # Closed tickets never change again: drop them from the state.
    finished = (tickets["close_day"] >= 0) & (tickets["close_day"] <= day)
    finished |= (tickets["solve_day"] < 0) & (tickets["open_day"] + 30 <= day)
    state.tickets = {name: values[~finished] for name, values in tickets.items()}
    return snapshots


_TICKET_EVENTS = (("solve_day", "solved"), ("reopen_day", "open"), ("resolve_again_day", "solved"), ("close_day", "closed"))


@dataclass
class TicketSnapshots:
    """Tickets as the export API shows them, column by column.

    `columns`: the plain fields (None where a ticket has no value) and `_person_id`. The list
    fields are given as their possible items in list order, one column each, None where a
    ticket lacks the item: `tags` (text) and `status_history` ((status, at) with `at` None
    for a status the ticket has not taken)."""

    columns: dict[str, np.ndarray]
    tags: list[np.ndarray]
    status_history: list[tuple[str, np.ndarray]]
    # truth/ticket_comments.csv rows of the comments shown for the first time today:
    # ticket_id, person_id, cause, comment_date.
    comment_causes: list[list] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.columns["ticket_id"]) if self.columns else 0


def _ticket_snapshots(tickets: dict[str, np.ndarray], day: int, state: State) -> TicketSnapshots:
    """The tickets as the export API shows them at the end of `day`.

    Their histories: new and open when opened, pending at the first reply, then the planned
    events that have happened, each at 40,000 s + 1 h per status before it on its day."""
    if not tickets:  # none opened yet
        return TicketSnapshots({}, [], [])
    opened_at = _timestamps(state.start, 86_400 * tickets["open_day"] + tickets["opened_seconds"])
    replied = tickets["open_day"] + tickets["reply_seconds"] // 86_400 <= day
    first_reply_at = np.where(replied, _timestamps(state.start, 86_400 * tickets["open_day"] + tickets["reply_seconds"]), None)
    history = [("new", opened_at), ("open", opened_at), ("pending", first_reply_at)]
    status = np.where(replied, "pending", "open").astype(object)
    updated_at = np.where(replied, first_reply_at, opened_at)
    solved_at = np.full(len(replied), None, dtype=object)
    statuses_before = 2 + replied
    for name, event in _TICKET_EVENTS:
        happened = (tickets[name] >= 0) & (tickets[name] <= day)
        at = np.where(happened, _timestamps(state.start, 86_400 * tickets[name] + 40_000 + 3_600 * statuses_before), None)
        history.append((event, at))
        status[happened] = event
        updated_at[happened] = at[happened]
        if event == "solved":
            solved_at[happened] = at[happened]
        statuses_before = statuses_before + happened
    rated = (status == "solved") | (status == "closed")
    rating = tickets["rating"]
    comments, causes = _ticket_comments(tickets, rated, replied, day, state)
    reopened = (tickets["reopen_day"] >= 0) & (tickets["reopen_day"] <= day)
    columns = {
        "ticket_id": tickets["ticket_id"],
        "requester_email": tickets["requester_email"],
        "channel": tickets["channel"],
        "category": tickets["category"],
        "priority": tickets["priority"],
        "status": status,
        "created_at": opened_at,
        "updated_at": updated_at,
        "first_reply_at": first_reply_at,
        "solved_at": np.where(rated, solved_at, None),
        "satisfaction_rating": np.where(rated, rating.astype(object), None),
        "satisfaction_comment": comments,
        "_person_id": tickets["person_id"],
    }
    tags = [tickets["category"], tickets["priority"], np.where(reopened, "reopened", None)]
    return TicketSnapshots(columns, tags, history, causes)


# ---- satisfaction comments ---------------------------------------------------------------------
# A comment is written about one cause of the ticket's experience, in the customer's own words:
# phrases of that cause (each `{a|b|c}` a choice of words), sometimes two of them, sometimes with
# filler around them, with the occasional typo. Its words come from a generator of its own, seeded
# by (seed, ticket): the main stream of the day is untouched (every other simulated value is what
# it was before comments varied), and a ticket shows the same comment in every export.
#
# When it is shown. A rated ticket's comment comes with its last rating: from its solve, or from
# its second solve when it was reopened (the customer comments once the ticket is done). An
# unresolved ticket is never solved, so never rated: its customer answers the desk's first reply
# (the last the desk does on it) with a comment and no rating, shown from that reply on.
COMMENT_CAUSES = ("slow_reply", "unresolved", "reopened", "product_fault", "praise")
_COMMENT_SHARE = {"slow_reply": 0.5, "unresolved": 0.7, "reopened": 0.7, "product_fault": 0.45, "praise": 0.2}
# Each cause's phrases share a core of words (as complaints about one thing do) and overlap other
# causes' words now and then ("still waiting", "problem", "days"), as real comments do.
_CAUSE_PHRASES = {
    "slow_reply": (
        "{slow|late|sluggish} {reply|response|answer}",
        "waited {two|three|four|several} days for {a reply|an answer|a response}",
        "{the|your} {reply|response|answer} came {way too late|far too late|much too late}",
        "{took|needed} {ages|forever} to {reply|answer|respond}",
        "{very|really|so} slow to {reply|answer|respond}",
        "nobody {replied|answered|responded} for days, too slow",
        "{long|endless} wait for {a reply|an answer|a response}",
    ),
    "unresolved": (
        "{problem|issue} still not {fixed|resolved|solved}",
        "still {unresolved|unsolved|open}, {no|zero} {solution|fix}",
        "nobody {fixed|resolved|solved} {it|my problem|the issue}",
        "{your|the} {reply|answer} {fixed|solved|resolved} nothing",
        "still open, {no|zero} {solution|fix} {yet|so far}",
        "still waiting for a {solution|fix|resolution}",
    ),
    "reopened": (
        "had to reopen the {ticket|case}",
        "{problem|issue} came back {after|once} {they|you} closed {it|the ticket}",
        "closed too {early|soon}, had to {write|call} again",
        "{same|identical} {problem|issue} again, {ticket|case} reopened",
        "{it|the problem} {happened|came back|returned} again {a few days|a week|two days} later",
        "{second|third} time {reopening|opening} the same {ticket|case}",
    ),
    "product_fault": (
        "{item|product|parcel} arrived {broken|damaged|defective|cracked}",
        "{defective|faulty|broken} {item|product|device}, {want|need} a replacement",
        "{poor|bad|cheap} quality {item|product}, {it|the product} {broke|fell apart|ripped}",
        "{the|my} {item|product|device} {broke|stopped working} {within a week|on first use|after one wash}",
        "{screen|zip|battery|motor|stitching} {broken|faulty|defective} {out of the box|from day one}",
        "{faulty|defective|damaged} {product|item|goods}, {poor|bad} quality",
    ),
    "praise": (
        "{thanks|thank you|many thanks|cheers}, {great|excellent|super} service",
        "{quick|fast|speedy} and helpful, {thanks|thank you}",
        "{the agent|the support team|the staff} {was|were} {very|really|so} helpful",
        "great {support|help|service}, {thanks|thank you}",
        "{very|really} {happy|pleased} with the {help|service}, {thanks|thank you}",
        "{helpful|friendly} {agent|staff|team}, great service",
    ),
}
_FILLER = (
    "hi", "hello", "regards", "fyi", "anyway", "as i said on the phone", "see my previous email",
    "ordered it for my {mum|dad|sister|partner}", "order number is in the ticket", "{second|third} order this year",
    "{first time|not the first time} i {contact|write to} you", "please note", "ok",
)
_SLOT = re.compile(r"\{([^}]*)\}")
_PRIORITY_INDEX = {name: index for index, name in enumerate(_PRIORITIES.tolist())}


def _ticket_comments(tickets: dict[str, np.ndarray], rated: np.ndarray, replied: np.ndarray, day: int, state: State) -> tuple[np.ndarray, list[list]]:
    """Each snapshot ticket's satisfaction_comment (None without one; see above for when it is
    shown), and the truth rows of the comments shown for the first time on `day`."""
    sla_seconds = 3_600 * _SLA_HOURS[[_PRIORITY_INDEX[priority] for priority in tickets["priority"].tolist()]]
    causes = {
        # Drawn at 1.2 to 4 times the first-reply target when slow, at most 0.9 times otherwise.
        "slow_reply": tickets["reply_seconds"] - tickets["opened_seconds"] > sla_seconds,
        "unresolved": tickets["solve_day"] < 0,
        "reopened": tickets["reopen_day"] >= 0,
        "product_fault": tickets["category"] == "product",
    }
    has_cause = np.any(np.vstack(list(causes.values())), axis=0)
    causes["praise"] = ~has_cause & (tickets["rating"] >= 4)
    comment_day = np.where(causes["unresolved"], tickets["open_day"] + tickets["reply_seconds"] // 86_400,
                           np.where(causes["reopened"], tickets["resolve_again_day"], tickets["solve_day"]))
    shown = np.where(causes["unresolved"], replied, rated & (comment_day <= day)) & (has_cause | causes["praise"])
    comments = np.full(len(shown), None, dtype=object)
    truth = []
    for position in np.flatnonzero(shown).tolist():
        ticket_id = int(tickets["ticket_id"][position])
        own = [cause for cause in COMMENT_CAUSES if causes[cause][position]]
        rng = np.random.default_rng([state.seed, 19, ticket_id])
        cause = own[rng.integers(len(own))]
        if rng.random() >= _COMMENT_SHARE[cause]:
            continue
        comments[position] = _compose_comment(rng, cause)
        if comment_day[position] == day:
            truth.append([ticket_id, int(tickets["person_id"][position]), cause, state.date_of(day).isoformat()])
    return comments, truth



def _compose_comment(rng: np.random.Generator, cause: str) -> str:
    """A comment about `cause`: one or two of its phrases, maybe filler, maybe a typo."""
    phrases = _CAUSE_PHRASES[cause]
    picked = rng.choice(len(phrases), 1 + int(rng.random() < 0.3), replace=False)
    parts = [_fill(rng, phrases[index]) for index in picked.tolist()]
    for _ in range(rng.choice(3, p=[0.55, 0.35, 0.1])):
        filler = _fill(rng, _FILLER[rng.integers(len(_FILLER))])
        parts.insert(0 if rng.random() < 0.5 else len(parts), filler)
    text = str(rng.choice([", ", ". ", " - ", " "])).join(parts)
    for _ in range(rng.choice(3, p=[0.85, 0.12, 0.03])):
        text = _typo(rng, text)
    if rng.random() < 0.5:
        text = text[:1].upper() + text[1:]
    return text + str(rng.choice(["", ".", "!", "!!"]))


def _fill(rng: np.random.Generator, template: str) -> str:
    """`template` with each `{a|b|c}` replaced by one of its words (an empty choice drops it)."""
    filled = _SLOT.sub(lambda slot: str(rng.choice(slot.group(1).split("|"))), template)
    return " ".join(filled.split())


def _typo(rng: np.random.Generator, text: str) -> str:
    """`text` with one word of four letters or more misspelt: two letters swapped, one dropped or
    one doubled."""
    words = text.split(" ")
    long_words = [position for position, word in enumerate(words) if len(word) >= 4 and word.isalpha()]
    if not long_words:
        return text
    position = long_words[rng.integers(len(long_words))]
    word = words[position]
    at = int(rng.integers(1, len(word) - 1))
    kind = rng.integers(3)
    words[position] = (word[:at] + word[at + 1] + word[at] + word[at + 2:] if kind == 0
                       else word[:at] + word[at + 1:] if kind == 1 else word[:at] + word[at] + word[at:])
    return " ".join(words)


def _interactions(rng, customers, index, day, date) -> dict[str, np.ndarray]:
    personas = customers["persona"][index]
    who = index[rng.random(len(index)) < _persona["interactions_per_day"][personas]]
    count = len(who)
    return {
        "interaction_id": np.array([f"I{day:05d}{n:06d}" for n in range(count)], dtype=object),
        "crm_id": customers["crm_id"][who],
        "interaction_type": rng.choice(_INTERACTION_TYPES, count),
        "outcome": rng.choice(_INTERACTION_OUTCOMES, count),
        "occurred_at": _timestamps(date, rng.integers(8 * 3600, 19 * 3600, count)),
        "_person_id": customers["person_id"][who],
    }


CAMPAIGN_EVERY_DAYS = 14
CAMPAIGN_LENGTH_DAYS = 7
CONTROL_SHARE = 0.2


def _campaigns(state, rng, customers, index, day, date):
    """Launch a campaign every two weeks; members' outcomes are exported when it ends.
    Returns the day's campaigns and exported members, each a table of one array per column."""
    campaigns = {name: np.array([], dtype=object) for name in ("campaign_id", "name", "channel", "start_date", "end_date", "cost")}
    if day % CAMPAIGN_EVERY_DAYS == 3:
        campaign_id = f"K{state.next_campaign:04d}"
        state.next_campaign += 1
        end = state.date_of(day + CAMPAIGN_LENGTH_DAYS)
        campaigns = {
            "campaign_id": [campaign_id],
            "name": [f"Campaign {campaign_id} {date:%b %Y}"],
            "channel": [str(rng.choice(_CAMPAIGN_CHANNELS))],
            "start_date": [date.isoformat()],
            "end_date": [end.isoformat()],
            "cost": [round(float(rng.uniform(500, 5000)), 2)],
        }
        campaigns = {name: np.array(values, dtype=object) for name, values in campaigns.items()}
        eligible = index[customers["marketing_opt_in"][index]]
        chosen = eligible[rng.random(len(eligible)) < 0.25]
        count = len(chosen)
        treated = rng.random(count) >= CONTROL_SHARE
        personas = customers["persona"][chosen]
        conversion = _persona["campaign_base_conversion"][personas] + treated * _persona["campaign_uplift"][personas]
        converted = rng.random(count) < conversion
        opened = treated & (rng.random(count) < 0.4)
        clicked = opened & (rng.random(count) < 0.3)
        conversion_day = np.full(count, -1)
        conversion_day[converted] = day + rng.integers(1, CAMPAIGN_LENGTH_DAYS + 1, int(converted.sum()))
        members = {
            "campaign_id": np.full(count, campaign_id, dtype=object),
            "crm_id": customers["crm_id"][chosen],
            "member_group": np.where(treated, "treatment", "control").astype(object),
            "sent": treated,
            "opened": opened,
            "clicked": clicked,
            "converted": converted,
            "export_day": np.full(count, day + CAMPAIGN_LENGTH_DAYS),
            "_person_id": customers["person_id"][chosen],
            "_persona": personas,
            "conversion_day": conversion_day,
        }
        state.members = concat_rows(state.members, members)
        conversions = {
            "person_id": members["_person_id"][converted],
            "day": conversion_day[converted],
            "campaign_id": members["campaign_id"][converted],
        }
        state.conversions = concat_rows(state.conversions, conversions)
    if not state.members:
        return campaigns, {}
    ending, state.members = _split(state.members, state.members["export_day"] == day)
    # A member who churned before the day they would have bought never bought: not converted.
    churn_day = customers["churn_day"][ending["_person_id"] - 1]
    ending["converted"] = ending["converted"] & ((churn_day < 0) | (churn_day > ending["conversion_day"]))
    return campaigns, ending


def _crm_changes(rng, customers, index, day) -> None:
    """Loyalty tiers follow spend; a few people move city or change their marketing consent."""
    tier = np.searchsorted(_TIER_SPEND, customers["spend"][index], side="right")
    moving_up = tier > customers["tier_rank"][index]
    upgrade = index[moving_up]
    customers["tier_rank"][upgrade] = tier[moving_up]
    customers["loyalty_tier"][upgrade] = _TIERS[tier[moving_up]]
    moving = index[rng.random(len(index)) < 0.0003]
    city = rng.integers(0, len(_CITIES), len(moving))
    customers["city"][moving] = _CITIES[city]
    customers["country"][moving] = _COUNTRIES[city]
    consent = index[rng.random(len(index)) < 0.0003]
    customers["marketing_opt_in"][consent] = ~customers["marketing_opt_in"][consent]
    customers["modified_day"][np.concatenate([upgrade, moving, consent])] = day
