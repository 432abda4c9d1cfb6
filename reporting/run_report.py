"""The run report of one as-of date: a self-contained HTML page (charts as inline SVG drawn by
matplotlib, no script or font fetched from anywhere) kept per date beside an index of every report.

It reads what BI reads: the `published` marts (the last build whose tests passed) and the models'
rows of the date in `ml`, plus the run's own records (`raw_meta`'s load audit and quarantine,
`ml.model_runs`, the publish log). A section whose model has not published for the date says why
(not run yet, too little data, below its quality floor, failed) instead of drawing nothing; the
report never fails for a missing model. No personal field is shown: customers appear by key.

`write_report` is what the DAG's `report` task and `crmw report` call; `sections` gathers the
figures (SQL through the warehouse adapter, small aggregates only: the report of a million
customers reads grouped rows, never the customers) and `render` turns them into HTML.
"""

from __future__ import annotations

import datetime as dt
import functools
import html
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from extract_load.load import LOAD_AUDIT, QUARANTINE
from ml_tasks.churn import RISK_BANDS
from ml_tasks.lifetime_value import TIERS as VALUE_TIERS
from ml_tasks.uplift import UPLIFT_BANDS
from ml_tasks.warehouse_io import MODEL_RUNS as MODEL_RUNS_TABLE
from warehouse import Warehouse, connect
from warehouse.publish import PUBLISH_LOG, PUBLISHED

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

REPORT_PREFIX = "crm_report_"
INDEX = "index.html"
TEMPLATE = Path(__file__).with_name("run_report.html.j2")
# Days of history the time-series charts show before the as-of date.
HISTORY_DAYS = 91
MODEL_RUNS = MODEL_RUNS_TABLE.name


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Tile:
    """A headline figure with its change against the previous run's date and the same weekday a
    week before (None where that day has no figure)."""

    label: str
    value: str
    against_previous: str | None
    against_last_week: str | None
    higher_is_better: bool


@dataclass
class Section:
    anchor: str
    title: str
    intro: str = ""
    tiles: list[Tile] = field(default_factory=list)
    charts: list[str] = field(default_factory=list)  # SVG markup
    tables: list[Table] = field(default_factory=list)
    missing: str = ""  # why the section has nothing to show


def report_dir(environ: dict[str, str] | None = None) -> Path:
    """Where reports go: `<export dir>/reports` (CRMW_EXPORT_DIR, by default .local/exports)."""
    from ml_tasks.tasks import export_dir

    return export_dir(environ) / "reports"


def report_path(folder: Path, as_of_date: dt.date) -> Path:
    return folder / f"{REPORT_PREFIX}{as_of_date.isoformat()}.html"


def write_report(as_of_date: dt.date, run_id: str, warehouse_url: str | None = None, folder: Path | None = None,
                 dbt_tests: Mapping[str, str | None] | None = None) -> Path:
    """Write the report of `as_of_date` (a rerun of the date replaces it) and the index beside it;
    returns the report's path. `dbt_tests`: the run's dbt test tasks and their states, where the
    report is written by the DAG (the build's results are Airflow's, not the warehouse's)."""
    folder = folder or report_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with connect(warehouse_url) as warehouse:
        page = render(as_of_date, run_id, sections(warehouse, as_of_date, dbt_tests))
    path = report_path(folder, as_of_date)
    _write_atomically(path, page)
    _write_atomically(folder / INDEX, render_index(folder))
    return path


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def sections(warehouse: Warehouse, as_of_date: dt.date, dbt_tests: Mapping[str, str | None] | None = None) -> list[Section]:
    builders = [functools.partial(data_quality, dbt_tests=dbt_tests) if build is data_quality else build for build in SECTION_BUILDERS]
    return [build(warehouse, as_of_date) for build in builders]


def run_summary(as_of_date: dt.date, dbt_tests: Mapping[str, str | None], warehouse_url: str | None = None) -> dict:
    """The run's data quality in a few figures, for the DAG's report task to return (the Airflow UI
    shows it with the task): whether BI's tables were published for the date, the rows quarantined
    per source table, each model's status, and the dbt tests that warned, failed or did not run."""
    with connect(warehouse_url) as warehouse:
        published = _published_date(warehouse, as_of_date) == as_of_date
        quarantined = {} if not _has_table(warehouse, LOAD_AUDIT) else {
            f"{system}.{entity}": int(rows) for system, entity, rows in warehouse.fetchall(
                f"select system, entity, sum(rows_quarantined) from {LOAD_AUDIT} where _batch_date = ?"
                f" group by 1, 2 having sum(rows_quarantined) > 0 order by 1, 2", (as_of_date,))
        }
        models = {} if not _has_table(warehouse, MODEL_RUNS) else dict(warehouse.fetchall(
            f"select model_name, status from {MODEL_RUNS} as runs where as_of_date = ? and finished_at = (select max(finished_at)"
            f" from {MODEL_RUNS} as later where later.model_name = runs.model_name and later.as_of_date = runs.as_of_date)"
            f" order by model_name", (as_of_date,)))
    return {
        "published_for_date": published,
        "rows_quarantined": quarantined,
        "models": models,
        "dbt_tests": _test_counts(dbt_tests),
    }


def _test_counts(dbt_tests: Mapping[str, str | None]) -> dict:
    """The build's tests by outcome: how many passed, which warned and which failed (by name), how
    many did not run (skipped after a failure, or not reached)."""
    warned = sorted(test for test, status in dbt_tests.items() if status == "warn")
    failed = sorted(test for test, status in dbt_tests.items() if status in ("fail", "error"))
    passed = sum(status == "pass" for status in dbt_tests.values())
    return {"passed": passed, "warned": warned, "failed": failed, "not_run": len(dbt_tests) - passed - len(warned) - len(failed)}


# ---------------------------------------------------------------------------------------------
# Reading


def _has_table(warehouse: Warehouse, table: str) -> bool:
    return bool(warehouse.table_columns(table))


def _model_missing(warehouse: Warehouse, model: str, table: str, as_of_date: dt.date) -> str:
    """Why `table` (written by `model`) holds no rows of the date: the model's run of the date as
    ml.model_runs records it, or that none is recorded."""
    if not _has_table(warehouse, MODEL_RUNS):
        return f"No model has run on this warehouse yet: {model} publishes {table} once the ml tasks run."
    runs = warehouse.fetchall(
        f"select status, message from {MODEL_RUNS} where model_name = ? and as_of_date = ? order by finished_at desc",
        (model, as_of_date),
    )
    if not runs:
        return f"{model} has no run recorded for {as_of_date}: its section fills once it runs for this date."
    status, message = runs[0]
    reason = f": {message}" if message else ""
    return f"{model} did not publish for {as_of_date} (status {status}{reason})."


def _model_frame(warehouse: Warehouse, model: str, table: str, as_of_date: dt.date, select: str,
                 params: Sequence = ()) -> tuple["pd.DataFrame | None", str]:
    """`select` (which reads `table` filtered on `as_of_date = ?`, the first parameter) as a
    frame, or None and why the model's rows of the date are missing."""
    if _has_table(warehouse, table):
        frame = warehouse.fetch_df(select, (as_of_date, *params))
        if len(frame):
            return frame, ""
    return None, _model_missing(warehouse, model, table, as_of_date)


def model_section(anchor: str, title: str, intro: str, model: str, table: str, select: str):
    """A section of one model's rows of the date: `select` (on `table`, filtered on `as_of_date = ?`)
    is read and handed to the decorated function to draw, or the section says why it is missing."""

    def declare(draw: Callable[[Section, "pd.DataFrame", Warehouse, dt.date], None]) -> Callable[[Warehouse, dt.date], Section]:
        @functools.wraps(draw)
        def build(warehouse: Warehouse, as_of_date: dt.date) -> Section:
            section = Section(anchor, title, intro)
            frame, section.missing = _model_frame(warehouse, model, table, as_of_date, select)
            if frame is not None:
                draw(section, frame, warehouse, as_of_date)
            return section

        return build

    return declare


# ---------------------------------------------------------------------------------------------
# Formatting


def _number(value: float | None, decimals: int = 0) -> str:
    if value is None or value != value:  # None or NaN
        return "–"
    return f"{value:,.{decimals}f}"


def _percent(value: float | None, decimals: int = 1) -> str:
    return "–" if value is None or value != value else f"{100 * value:.{decimals}f}%"


def _change(now: float | None, before: float | None) -> str | None:
    """The relative change from `before` to `now`, signed; None where either is missing or
    `before` is zero."""
    if now is None or before is None or now != now or before != before or before == 0:
        return None
    return f"{(now - before) / abs(before):+.1%}"


def _in_band_order(frame: "pd.DataFrame", column: str, bands: Sequence[str]) -> "pd.DataFrame":
    """The rows of a frame keyed by band (`column`), in the model's order of `bands`, highest first."""
    return frame.set_index(column).reindex([band for band in bands if band in set(frame[column])]).reset_index()


def _table(frame: "pd.DataFrame", formats: dict[str, Callable[[object], str]] | None = None, caption: str = "") -> Table:
    formats = formats or {}
    rows = [
        [formats[column](value) if column in formats else ("–" if value is None or value != value else str(value))
         for column, value in zip(frame.columns, record)]
        for record in frame.itertuples(index=False, name=None)
    ]
    return Table([column.replace("_", " ") for column in frame.columns], rows, caption)


# ---------------------------------------------------------------------------------------------
# Charts: matplotlib to inline SVG (text kept as text, ids fixed so a rerun draws the same file).


def _figure(width: float = 9.0, height: float = 3.0, panels: int = 1) -> tuple["Figure", list]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    for axis in axes:
        axis.spines[["top", "right"]].set_visible(False)
        axis.grid(axis="y", alpha=0.3)
    return figure, list(axes)


def _svg(figure: "Figure") -> str:
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "crm-warehouse"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    markup = buffer.getvalue()
    return markup[markup.index("<svg"):]


def _thousands(axis) -> None:
    """Whole numbers with separators on the y axis (matplotlib would write 2.0 over a '1e6')."""
    from matplotlib.ticker import StrMethodFormatter

    axis.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))


def _date_axis(axis) -> None:
    import matplotlib.dates as mdates

    axis.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=8))
    axis.xaxis.set_major_formatter(mdates.ConciseDateFormatter(axis.xaxis.get_major_locator()))


# ---------------------------------------------------------------------------------------------
# Sections


def headline(warehouse: Warehouse, as_of_date: dt.date) -> Section:
    section = Section("headline", "Headline figures")
    previous = _published_date(warehouse, as_of_date, before=True)
    days = {"now": as_of_date, "previous": previous, "week": as_of_date - dt.timedelta(days=7)}
    first = min(day for day in days.values() if day)
    sales = _daily_sales(warehouse, first, as_of_date)
    service = _daily_service(warehouse, first, as_of_date)
    if sales is None and service is None:
        section.missing = "The published marts hold no sales or service figures yet: they appear after the first run that passes its tests."
        return section
    figures = []
    if sales is not None:
        figures += [("Revenue", sales, "revenue", 2, True), ("Revenue orders", sales, "orders", 0, True),
                    ("Average order value", sales, "average_order_value", 2, True)]
    if service is not None:
        figures += [("Tickets opened", service, "opened_tickets", 0, False), ("Open backlog", service, "backlog_tickets", 0, False),
                    ("SLA breach rate", service, "sla_breach_rate", None, False), ("CSAT (1–5)", service, "csat", 2, True)]
    for label, frame, column, decimals, higher_is_better in figures:
        values = {name: _value_on(frame, column, day) for name, day in days.items()}
        shown = _percent(values["now"]) if decimals is None else _number(values["now"], decimals)
        section.tiles.append(Tile(label, shown, _change(values["now"], values["previous"]),
                                  _change(values["now"], values["week"]), higher_is_better))
    against = f"the previous run's date ({previous})" if previous else "the previous run (none yet)"
    section.intro = (f"The day {as_of_date} against {against} and the same weekday a week before ({days['week']})."
                     " Revenue: valid lines of orders neither cancelled nor returned; orders: those orders.")
    return section


def _as_date(value) -> dt.date | None:
    if value is None:
        return None
    return value.date() if isinstance(value, dt.datetime) else value


def _value_on(frame: "pd.DataFrame", column: str, day: dt.date | None) -> float | None:
    if day is None:
        return None
    matched = frame.loc[frame["day"].dt.date == day, column]
    return float(matched.iloc[0]) if len(matched) else None


def _daily_sales(warehouse: Warehouse, first: dt.date, last: dt.date) -> "pd.DataFrame | None":
    """Revenue (kpi_daily_sales), revenue orders and their average value per day, from `first`."""
    kpis, orders = f"{PUBLISHED}.kpi_daily_sales", f"{PUBLISHED}.fct_orders"
    if not (_has_table(warehouse, kpis) and _has_table(warehouse, orders)):
        return None
    revenue = warehouse.fetch_df(f"select sales_date as day, sum(revenue) as revenue from {kpis}"
                                 f" where sales_date between ? and ? group by sales_date", (first, last))
    counted = warehouse.fetch_df(f"select order_date as day, count(*) as orders from {orders}"
                                 f" where order_date between ? and ? and is_revenue and line_count > invalid_line_count"
                                 f" group by order_date", (first, last))
    if revenue.empty and counted.empty:
        return None
    frame = revenue.merge(counted, on="day", how="outer").sort_values("day")
    frame["average_order_value"] = frame["revenue"] / frame["orders"]
    return frame.reset_index(drop=True)


def _daily_service(warehouse: Warehouse, first: dt.date, last: dt.date) -> "pd.DataFrame | None":
    kpis = f"{PUBLISHED}.kpi_daily_service"
    if not _has_table(warehouse, kpis):
        return None
    frame = warehouse.fetch_df(f"select service_date as day, opened_tickets, backlog_tickets, median_first_reply_minutes,"
                               f" sla_breach_rate, csat from {kpis} where service_date between ? and ? order by service_date",
                               (first, last))
    return None if frame.empty else frame


def sales_over_time(warehouse: Warehouse, as_of_date: dt.date) -> Section:
    section = Section("sales", "Revenue and orders", f"Each day of the {HISTORY_DAYS} days to {as_of_date}, with the 7-day mean.")
    frame = _daily_sales(warehouse, as_of_date - dt.timedelta(days=HISTORY_DAYS - 1), as_of_date)
    if frame is None:
        section.missing = "No published sales in this period."
        return section
    days = frame["day"]
    figure, (revenue, orders) = _figure(panels=2, height=3.2)
    revenue.bar(days, frame["revenue"], color="#9ecae1", label="revenue")
    revenue.plot(days, frame["revenue"].rolling(7, min_periods=1).mean(), color="#08519c", label="7-day mean")
    revenue.set_title("Revenue per day")
    _thousands(revenue)
    orders.plot(days, frame["orders"], color="#fdae6b", label="orders")
    orders.plot(days, frame["orders"].rolling(7, min_periods=1).mean(), color="#a63603", label="7-day mean")
    orders.set_title("Revenue orders per day")
    for axis in (revenue, orders):
        _date_axis(axis)
        axis.legend(frameon=False, fontsize="small")
    section.charts.append(_svg(figure))
    return section


def service(warehouse: Warehouse, as_of_date: dt.date) -> Section:
    section = Section("service", "Service desk", f"Backlog, first reply, SLA breaches and satisfaction, each day of the {HISTORY_DAYS} days to {as_of_date}.")
    frame = _daily_service(warehouse, as_of_date - dt.timedelta(days=HISTORY_DAYS - 1), as_of_date)
    if frame is None:
        section.missing = "No published service figures in this period."
        return section
    panels = [("backlog_tickets", "Open backlog", 1), ("median_first_reply_minutes", "Median first reply (min)", 1),
              ("sla_breach_rate", "SLA breach rate (%)", 100), ("csat", "CSAT of solved tickets (1–5)", 1)]
    figure, axes = _figure(width=11, height=2.8, panels=len(panels))
    for axis, (column, title, scale) in zip(axes, panels):
        axis.plot(frame["day"], frame[column] * scale, color="#54278f")
        axis.set_title(title, fontsize="medium")
        _date_axis(axis)
    section.charts.append(_svg(figure))
    latest = frame.tail(7).iloc[::-1].assign(day=lambda rows: rows["day"].dt.date)
    section.tables.append(_table(
        latest[["day", "opened_tickets", "backlog_tickets", "median_first_reply_minutes", "sla_breach_rate", "csat"]],
        {"median_first_reply_minutes": lambda v: _number(v, 0), "sla_breach_rate": _percent, "csat": lambda v: _number(v, 2)},
        "The last seven days",
    ))
    return section


@model_section("segments", "Customer segments", "RFM segments by rule and behavioural clusters (customer_segments).",
    "customer_segments", "ml.segment_profiles",
    "select kind, segment, label, customers, share, mean_recency_days, mean_frequency, mean_monetary,"
    " mean_average_order_value, top_categories, main_channel from ml.segment_profiles where as_of_date = ?"
    " order by kind, customers desc",
)
def segments(section: Section, frame: "pd.DataFrame", warehouse: Warehouse, as_of_date: dt.date) -> None:
    kinds = [kind for kind in frame["kind"].drop_duplicates()]
    figure, axes = _figure(width=11, height=0.6 + 0.32 * max(frame["kind"].value_counts()), panels=len(kinds))
    for axis, kind in zip(axes, kinds):
        rows = frame[frame["kind"] == kind].iloc[::-1]
        names = rows["label"].fillna(rows["segment"]).astype(str)
        axis.barh(names, rows["customers"], color="#74c476")
        axis.set_title(f"Customers per {kind.replace('_', ' ')}", fontsize="medium")
        axis.grid(axis="x", alpha=0.3)
        axis.grid(axis="y", visible=False)
    section.charts.append(_svg(figure))
    profile = frame.drop(columns=["label"])
    section.tables.append(_table(profile, {
        "share": _percent, "mean_recency_days": lambda v: _number(v, 0), "mean_frequency": lambda v: _number(v, 1),
        "mean_monetary": lambda v: _number(v, 2), "mean_average_order_value": lambda v: _number(v, 2),
        "customers": lambda v: _number(v),
    }, "Profiles: each segment's customers and mean figures"))


@model_section("associations", "Product associations and next-best offers",
    "The rules with the highest lift (how many times likelier the consequent is in a basket holding the"
    " antecedent), and first offers of customers drawn by key (association_rules).",
    "association_rules", "ml.association_rules",
    "select item_level, antecedent, consequent, rule_baskets, support, confidence, lift"
    " from ml.association_rules where as_of_date = ? order by lift desc, rule_baskets desc, antecedent, consequent limit 15",
)
def associations(section: Section, rules: "pd.DataFrame", warehouse: Warehouse, as_of_date: dt.date) -> None:
    section.tables.append(_table(rules, {"support": lambda v: _percent(v, 2), "confidence": _percent,
                                         "lift": lambda v: _number(v, 2), "rule_baskets": lambda v: _number(v)},
                                 "Top rules by lift"))
    # The customer key is a hash: its order is a fair sample, where the best scores are one rule's.
    offers, _ = _model_frame(
        warehouse, "association_rules", "ml.product_recommendations", as_of_date,
        "select customer_id, sku, score, rule, source from ml.product_recommendations"
        " where as_of_date = ? and rank = 1 order by customer_id limit 10",
    )
    if offers is not None:
        section.tables.append(_table(offers, {"score": lambda v: _number(v, 3)}, "Sample first offers (customers by key)"))


@model_section("churn", "Churn risk", "Each customer's probability of not buying in the next 90 days (churn_propensity).",
    "churn_propensity", "ml.churn_scores",
    "select risk_band, floor(churn_probability * 20) as bin, count(*) as customers"
    " from ml.churn_scores where as_of_date = ? group by 1, 2",
)
def churn(section: Section, bins: "pd.DataFrame", warehouse: Warehouse, as_of_date: dt.date) -> None:
    colours = {"high": "#de2d26", "medium": "#fc9272", "low": "#9ecae1"}
    figure, (histogram,) = _figure(height=2.8)
    for band in RISK_BANDS:
        rows = bins[bins["risk_band"] == band]
        histogram.bar(rows["bin"].clip(upper=19) / 20 + 0.025, rows["customers"], width=0.048, color=colours[band], label=f"{band} risk")
    histogram.set_xlabel("churn probability")
    histogram.set_ylabel("customers")
    histogram.legend(frameon=False, fontsize="small")
    section.charts.append(_svg(figure))
    bands = bins.groupby("risk_band", as_index=False)["customers"].sum()
    bands["share"] = bands["customers"] / bands["customers"].sum()
    bands = _in_band_order(bands, "risk_band", RISK_BANDS)
    section.tables.append(_table(bands, {"customers": lambda v: _number(v), "share": _percent}, "Customers per risk band"))
    reasons = warehouse.fetch_df("select reason_1 as top_reason, count(*) as customers from ml.churn_scores"
                                 " where as_of_date = ? and risk_band = 'high' group by 1", (as_of_date,))
    if len(reasons):
        # A reason names its customer's figures ("no order in 556 days"): counted by its wording.
        reasons["top_reason"] = reasons["top_reason"].fillna("none given").str.replace(r"\d[\d,.]*", "N", regex=True)
        reasons = reasons.groupby("top_reason", as_index=False)["customers"].sum().sort_values(
            ["customers", "top_reason"], ascending=[False, True]).head(8)
        section.tables.append(_table(reasons, {"customers": lambda v: _number(v)},
                                     "High-risk customers by their first reason (N: the customer's own figure)"))


@model_section("value", "Customer value", "Predicted spend of the next 365 days per value tier (customer_value).",
    "customer_value", "ml.customer_value",
    "select value_tier, count(*) as customers, sum(predicted_spend_365d) as predicted_spend_365d,"
    " avg(probability_alive) as mean_probability_alive, avg(expected_purchases_365d) as mean_expected_purchases_365d"
    " from ml.customer_value where as_of_date = ? group by 1",
)
def value_tiers(section: Section, tiers: "pd.DataFrame", warehouse: Warehouse, as_of_date: dt.date) -> None:
    tiers = _in_band_order(tiers, "value_tier", VALUE_TIERS)
    tiers["share_of_spend"] = tiers["predicted_spend_365d"] / tiers["predicted_spend_365d"].sum()
    figure, (axis,) = _figure(width=6, height=2.4)
    axis.bar(tiers["value_tier"], tiers["predicted_spend_365d"], color="#6baed6")
    axis.set_title("Predicted 365-day spend per tier", fontsize="medium")
    _thousands(axis)
    section.charts.append(_svg(figure))
    section.tables.append(_table(tiers, {
        "customers": lambda v: _number(v), "predicted_spend_365d": lambda v: _number(v, 2),
        "mean_probability_alive": _percent, "mean_expected_purchases_365d": lambda v: _number(v, 2), "share_of_spend": _percent,
    }))


@model_section("uplift", "Campaign uplift targets",
    "Customers by the predicted gain in conversion if contacted (campaign_uplift); contact the high band first.",
    "campaign_uplift", "ml.campaign_uplift_scores",
    "select uplift_band, count(*) as customers, avg(predicted_uplift) as mean_predicted_uplift,"
    " avg(case when marketing_opt_in then 1.0 else 0.0 end) as opted_in"
    " from ml.campaign_uplift_scores where as_of_date = ? group by 1",
)
def uplift(section: Section, bands: "pd.DataFrame", warehouse: Warehouse, as_of_date: dt.date) -> None:
    bands = _in_band_order(bands, "uplift_band", UPLIFT_BANDS)
    section.tables.append(_table(bands, {"customers": lambda v: _number(v), "mean_predicted_uplift": lambda v: _percent(v, 2),
                                         "opted_in": _percent}))


def satisfaction(warehouse: Warehouse, as_of_date: dt.date) -> Section:
    section = Section("satisfaction", "Satisfaction drivers and comment topics",
                      "What moves ticket ratings (satisfaction_drivers) and what comments are about (comment_topics).")
    drivers, drivers_missing = _model_frame(
        warehouse, "satisfaction_drivers", "ml.satisfaction_drivers", as_of_date,
        "select sentence, effect_stars, ci_low, ci_high, tickets from ml.satisfaction_drivers"
        " where as_of_date = ? and is_significant order by effect_rank limit 10",
    )
    topics, topics_missing = _model_frame(
        warehouse, "comment_topics", "ml.comment_topics", as_of_date,
        "select label, top_terms, comments, share, mean_rating from ml.comment_topics where as_of_date = ? order by comments desc",
    )
    if drivers is not None:
        stars = {column: (lambda v: _number(v, 2)) for column in ("effect_stars", "ci_low", "ci_high")}
        section.tables.append(_table(drivers, {**stars, "tickets": lambda v: _number(v)}, "Significant drivers, strongest first"))
    if topics is not None:
        section.tables.append(_table(topics, {"comments": lambda v: _number(v), "share": _percent,
                                              "mean_rating": lambda v: _number(v, 2)}, "Comment topics"))
    section.missing = " ".join(note for note, frame in ((drivers_missing, drivers), (topics_missing, topics)) if frame is None)
    if drivers is not None or topics is not None:
        section.intro += f" {section.missing}" if section.missing else ""
        section.missing = ""
    return section


@model_section("forecast", "Revenue forecast",
    "Revenue, all categories together and the five largest: the last 60 days and the forecast with its"
    " 80% band (sales_forecast; each band is the model's own, not a sum of the categories').",
    "sales_forecast", "ml.sales_forecast",
    "select forecast_date, category, predicted_revenue, lower_80, upper_80 from ml.sales_forecast where as_of_date = ?",
)
def forecast(section: Section, predicted: "pd.DataFrame", warehouse: Warehouse, as_of_date: dt.date) -> None:
    import pandas as pd

    from ml_tasks.forecast import TOTAL  # the series of every category together

    totals = predicted.groupby("category")["predicted_revenue"].sum()
    largest = [TOTAL, *totals.drop(TOTAL, errors="ignore").nlargest(5).index]
    largest = [category for category in largest if category in totals.index]
    history = warehouse.fetch_df(f"select sales_date, category, sum(revenue) as revenue from {PUBLISHED}.kpi_daily_sales"
                                 f" where sales_date between ? and ? group by 1, 2",
                                 (as_of_date - dt.timedelta(days=59), as_of_date))
    history = pd.concat([history, history.groupby("sales_date", as_index=False)["revenue"].sum().assign(category=TOTAL)])
    columns = min(3, len(largest))
    rows = -(-len(largest) // columns)
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 2.6 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, category in zip(axes, largest):
        past = history[history["category"] == category].sort_values("sales_date")
        ahead = predicted[predicted["category"] == category].sort_values("forecast_date")
        axis.plot(pd.to_datetime(past["sales_date"]), past["revenue"], color="#636363", linewidth=1, label="actual")
        axis.plot(pd.to_datetime(ahead["forecast_date"]), ahead["predicted_revenue"], color="#3182bd", label="forecast")
        axis.fill_between(pd.to_datetime(ahead["forecast_date"]), ahead["lower_80"], ahead["upper_80"], color="#3182bd", alpha=0.2, label="80% band")
        axis.set_title(str(category), fontsize="medium")
        axis.spines[["top", "right"]].set_visible(False)
        _thousands(axis)
        _date_axis(axis)
    for axis in axes[len(largest):]:
        axis.set_visible(False)
    axes[0].legend(frameon=False, fontsize="small")
    section.charts.append(_svg(figure))
    totals = predicted.groupby("category", as_index=False)[["predicted_revenue"]].sum().sort_values("predicted_revenue", ascending=False)
    horizon = f"{predicted['forecast_date'].min():%Y-%m-%d} to {predicted['forecast_date'].max():%Y-%m-%d}"
    section.tables.append(_table(totals, {"predicted_revenue": lambda v: _number(v, 2)}, f"Forecast revenue per category, {horizon}"))


def model_quality(warehouse: Warehouse, as_of_date: dt.date) -> Section:
    from ml_tasks.registry import MODELS

    section = Section("quality", "Model quality",
                      "Each model's run for the date (ml.model_runs): its status and the held-out metrics its quality floors name.")
    if not _has_table(warehouse, MODEL_RUNS):
        section.missing = "No model has run on this warehouse yet."
        return section
    runs = warehouse.fetch_df(f"select model_name, model_version, status, metrics, seconds, message, finished_at"
                              f" from {MODEL_RUNS} where as_of_date = ? order by finished_at", (as_of_date,))
    latest = runs.drop_duplicates("model_name", keep="last").set_index("model_name")
    rows = []
    for spec in MODELS:
        if spec.name not in latest.index:
            rows.append([spec.name, spec.version, "not run", "", "", ""])
            continue
        run = latest.loc[spec.name]
        metrics = json.loads(run["metrics"]) if isinstance(run["metrics"], str) and run["metrics"] else {}
        floors = "; ".join(
            f"{name} {_metric(metrics.get(name))} (floor {floor:g})" for name, floor in spec.quality_floors.items()
        )
        rows.append([spec.name, str(run["model_version"]), str(run["status"]), floors or "no floor",
                     # A run without a message reads back as NaN, which the table showed as "nan".
                     _number(run["seconds"], 1), run["message"] if isinstance(run["message"], str) else ""])
    section.tables.append(Table(["model", "version", "status", "held-out metrics against their floors", "seconds", "message"], rows))
    return section


def _metric(value) -> str:
    if isinstance(value, (int, float)):
        return f"{value:.3g}"
    return "not measured" if value is None else str(value)


def _published_date(warehouse: Warehouse, as_of_date: dt.date, before: bool = False) -> dt.date | None:
    """The newest as-of date whose build was published to BI, up to `as_of_date` (or before it)."""
    if not _has_table(warehouse, PUBLISH_LOG):
        return None
    bound = "<" if before else "<="
    return _as_date(warehouse.fetchall(f"select max(as_of_date) from {PUBLISH_LOG} where as_of_date {bound} ?", (as_of_date,))[0][0])


def data_quality(warehouse: Warehouse, as_of_date: dt.date, dbt_tests: Mapping[str, str | None] | None = None) -> Section:
    section = Section("data-quality", "Data quality",
                      f"What the run of {as_of_date} read, loaded and set aside per source table (raw_meta.load_audit), why rows were"
                      " quarantined (raw_meta.quarantine), the dbt tests, and whether BI's tables were published.")
    published = _published_date(warehouse, as_of_date)
    section.intro += (f" BI shows the build published for {published}." if published == as_of_date else
                      f" Not published for {as_of_date}: BI still shows the build of {published or 'no date yet'}"
                      " (a dbt test failed, or the run has not reached publish).")
    if dbt_tests is None:
        section.intro += " The dbt tests' results are the Airflow run's: this report was written outside it."
    else:
        counts = _test_counts(dbt_tests)
        section.tables.append(Table(
            ["dbt tests", "how many", "which"],
            [["passed", str(counts["passed"]), ""],
             ["warned", str(len(counts["warned"])), ", ".join(counts["warned"])],
             ["failed", str(len(counts["failed"])), ", ".join(counts["failed"])],
             ["not run (skipped after a failure)", str(counts["not_run"]), ""]],
            "The build's tests",
        ))
    if not _has_table(warehouse, LOAD_AUDIT):
        section.missing = "Nothing has been loaded into this warehouse yet."
        return section
    audit = warehouse.fetch_df(f"select system, entity, step, sum(rows_read) as rows_read, sum(rows_loaded) as rows_loaded,"
                               f" sum(rows_quarantined) as rows_quarantined, sum(rows_deleted) as rows_deleted,"
                               f" sum(rows_recovered) as rows_recovered from {LOAD_AUDIT} where _batch_date = ?"
                               f" group by 1, 2, 3 order by 1, 2, 3", (as_of_date,))
    if audit.empty:
        section.missing = f"No load is recorded for {as_of_date}."
        return section
    counts = {column: (lambda v: _number(v)) for column in audit.columns[3:]}
    section.tables.append(_table(audit, counts, "Rows per source table and step"))
    if _has_table(warehouse, QUARANTINE):
        reasons = warehouse.fetch_df(f"select system, entity, reason, count(*) as rows_quarantined from {QUARANTINE}"
                                     f" where _batch_date = ? group by 1, 2, 3 order by 4 desc", (as_of_date,))
        if len(reasons):
            # A reason ends with the row's own detail (the value it got, the parser's column): counted
            # by the rest, which also keeps a source value (an email, say) out of the report.
            reasons["reason"] = (reasons["reason"].str.replace(r"\s*\(.*\)$", "", regex=True)
                                 .str.replace(r"\bgot\b.*$", "got …", regex=True))
            reasons = reasons.groupby(["system", "entity", "reason"], as_index=False)["rows_quarantined"].sum()
            reasons = reasons.sort_values(["rows_quarantined", "system", "entity", "reason"], ascending=[False, True, True, True])
            section.tables.append(_table(reasons, {"rows_quarantined": lambda v: _number(v)},
                                         "Quarantined rows by reason (raw_meta.quarantine keeps each row and its full reason)"))
    return section


SECTION_BUILDERS: tuple[Callable[[Warehouse, dt.date], Section], ...] = (
    headline, sales_over_time, service, segments, associations, churn, value_tiers, uplift, satisfaction, forecast,
    model_quality, data_quality,
)


# ---------------------------------------------------------------------------------------------
# HTML


def _environment():
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    return Environment(loader=FileSystemLoader(TEMPLATE.parent), autoescape=select_autoescape(["html", "j2"]),
                       trim_blocks=True, lstrip_blocks=True)


def render(as_of_date: dt.date, run_id: str, parts: list[Section]) -> str:
    from markupsafe import Markup

    for part in parts:
        part.charts = [Markup(chart) for chart in part.charts]
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return _environment().get_template(TEMPLATE.name).render(
        as_of_date=as_of_date, run_id=run_id, generated=generated, sections=parts, index=INDEX,
    )


def render_index(folder: Path) -> str:
    """The index of every report in `folder`, newest date first."""
    dates = sorted((path.stem.removeprefix(REPORT_PREFIX) for path in folder.glob(f"{REPORT_PREFIX}*.html")), reverse=True)
    links = "\n".join(f'<li><a href="{REPORT_PREFIX}{html.escape(day)}.html">{html.escape(day)}</a></li>' for day in dates)
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>crm-warehouse run reports</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:40rem;color:#222}</style></head>\n"
        f"<body><h1>Run reports</h1><p>One per as-of date, newest first.</p><ul>\n{links}\n</ul></body></html>\n"
    )
