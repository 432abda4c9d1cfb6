"""The activation list: whom a CRM tool contacts tomorrow morning, through which channel, and why.

It turns the day's model outputs into actions, one per customer, the first that applies:
- `retain`: a churn probability of at least the setting's and a value tier of at least the
  setting's (ml.churn_scores, ml.customer_value), most value at risk first (churn probability x
  predicted 365-day spend): losing them costs most, so they are called where a phone number is known;
- `campaign`: the customers the next campaign moves most (ml.campaign_uplift_scores: the top share
  by predicted uplift, and only a positive one: a campaign sent to someone it does not move is
  cost, and to someone it puts off, a loss);
- `cross_sell`: a product rule fires on what they bought (ml.product_recommendations, source
  'rule', confidence at least the setting's).
Every listed customer carries their best next offer.

Consent is never traded for a score: only customers who opted in to marketing, as known on the
as-of date (activation.customer_contacts: opted in only when every current CRM contact of the
customer is), are listed; customers with an open service ticket are left out unless the setting
says otherwise (a sales call on top of an unsolved complaint). A customer no channel reaches is
left out too. Each exclusion is counted in the metrics.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

from ml_tasks.contract import BadParameter, InsufficientData, check_range, checked_input, typed_results

if TYPE_CHECKING:
    import pandas as pd

MODEL_VERSION = "activation-1"

CONTACTS = "activation.customer_contacts"
CHURN = "ml.churn_scores"
VALUE = "ml.customer_value"
UPLIFT = "ml.campaign_uplift_scores"
OFFERS = "ml.product_recommendations"
CONTACT_LIST = "activation.contact_list"

ACTIONS = ("retain", "campaign", "cross_sell")
VALUE_TIERS = ("high", "medium", "low")  # ml.customer_value's tiers, best first

CONTACT_COLUMNS = ("customer_id", "first_name", "last_name", "email", "phone", "is_marketing_opt_in", "open_tickets", "favourite_channel")
CHURN_COLUMNS = ("customer_id", "churn_probability", "reason_1")
VALUE_COLUMNS = ("customer_id", "predicted_spend_365d", "value_tier")
UPLIFT_COLUMNS = ("customer_id", "predicted_uplift", "conversion_if_treated", "conversion_if_not_treated", "uplift_rank")
OFFER_COLUMNS = ("customer_id", "rank", "sku", "score", "rule", "source")

CONTACT_LIST_COLUMNS: dict[str, str] = {
    "customer_id": "string",
    "priority": "integer",
    "action": "string",
    "channel": "string",
    "reason": "string",
    "first_name": "string",
    "last_name": "string",
    "email": "string",
    "phone": "string",
    "churn_probability": "double",
    "predicted_spend_365d": "double",
    "value_tier": "string",
    "predicted_uplift": "double",
    "offer_sku": "string",
    "offer_rule": "string",
}


@dataclass(frozen=True)
class ActivationSettings:
    retain_min_churn_probability: float = field(
        default=0.3, metadata={"doc": "activation: 'retain' customers have at least this churn probability (0-1)..."})
    retain_min_value_tier: str = field(
        default="medium", metadata={"doc": "activation: ...and at least this value tier (high, medium or low)"})
    campaign_top_share: float = field(
        default=0.1, metadata={"doc": "activation: 'campaign' customers are this top share of scored customers by predicted uplift"})
    cross_sell_min_confidence: float = field(
        default=0.3, metadata={"doc": "activation: 'cross_sell' needs a product rule offer of at least this confidence"})
    max_contacts_per_action: int = field(
        default=1000, metadata={"doc": "activation: at most this many customers per action a day, highest priority first"})
    exclude_open_tickets: bool = field(
        default=True, metadata={"doc": "activation: leave out customers with an open service ticket"})

    def __post_init__(self) -> None:
        check_range("retain_min_churn_probability", self.retain_min_churn_probability, minimum=0.0, maximum=1.0)
        if self.retain_min_value_tier not in VALUE_TIERS:
            raise BadParameter(f"retain_min_value_tier: got {self.retain_min_value_tier!r}, expected high, medium or low")
        check_range("campaign_top_share", self.campaign_top_share, minimum=0.0, maximum=1.0)
        check_range("cross_sell_min_confidence", self.cross_sell_min_confidence, minimum=0.0, maximum=1.0)
        check_range("max_contacts_per_action", self.max_contacts_per_action, minimum=1, kind=int)
        if not isinstance(self.exclude_open_tickets, bool):
            raise BadParameter(f"exclude_open_tickets: got {self.exclude_open_tickets!r}, expected true or false")


def run(inputs: Mapping[str, "pd.DataFrame"], as_of_date: dt.date, settings: ActivationSettings) -> tuple[dict[str, "pd.DataFrame"], dict]:
    """The day's contact list from the day's model outputs and contacts; see the module docstring."""
    import numpy as np
    import pandas as pd

    expected = (CONTACTS, CHURN, VALUE, UPLIFT, OFFERS)
    contacts = checked_input(inputs, CONTACTS, CONTACT_COLUMNS, expected)
    churn = checked_input(inputs, CHURN, CHURN_COLUMNS, expected)
    value = checked_input(inputs, VALUE, VALUE_COLUMNS, expected)
    uplift = checked_input(inputs, UPLIFT, UPLIFT_COLUMNS, expected)
    offers = checked_input(inputs, OFFERS, OFFER_COLUMNS, expected)
    if churn.empty and value.empty and uplift.empty and offers.empty:
        raise InsufficientData(
            f"no model output for {as_of_date}: {', '.join(expected[1:])} hold no rows (each model had too little data)"
        )

    best_offer = (
        offers.sort_values(["customer_id", "rank"]).drop_duplicates("customer_id")
        .rename(columns={"sku": "offer_sku", "rule": "offer_rule", "score": "offer_score", "source": "offer_source"})
    )
    customers = (
        contacts[list(CONTACT_COLUMNS)]
        .merge(churn[list(CHURN_COLUMNS)], on="customer_id", how="left")
        .merge(value[list(VALUE_COLUMNS)], on="customer_id", how="left")
        .merge(uplift[list(UPLIFT_COLUMNS)], on="customer_id", how="left")
        .merge(best_offer[["customer_id", "offer_sku", "offer_rule", "offer_score", "offer_source"]], on="customer_id", how="left")
        .sort_values("customer_id", ignore_index=True)
    )

    candidates = _candidates(customers, uplift, settings)
    metrics: dict = {"customers": int(len(customers)), "candidates": {action: int(len(rows)) for action, rows in candidates.items()}}
    chosen = pd.concat([rows.assign(action=action) for action, rows in candidates.items()], ignore_index=True)
    chosen = chosen.drop_duplicates("customer_id", keep="first")  # an action listed earlier wins

    # Consent and care come before any score, and are counted so the list's size can be explained.
    opted_in = chosen["is_marketing_opt_in"].fillna(False).astype(bool)
    open_ticket = chosen["open_tickets"].fillna(0).astype(int) > 0
    chosen["channel"] = _channel(chosen)
    reachable = chosen["channel"].notna()
    metrics["excluded_not_opted_in"] = int((~opted_in).sum())
    metrics["excluded_open_ticket"] = int((opted_in & open_ticket).sum()) if settings.exclude_open_tickets else 0
    keep = opted_in & (~open_ticket if settings.exclude_open_tickets else True)
    metrics["excluded_no_channel"] = int((keep & ~reachable).sum())
    listed = chosen[keep & reachable]
    listed = listed.groupby("action", sort=False, group_keys=False).head(settings.max_contacts_per_action)

    listed = listed.assign(priority=np.arange(1, len(listed) + 1), reason=[_reason(row) for row in listed.itertuples(index=False)])
    metrics["listed"] = {action: int((listed["action"] == action).sum()) for action in ACTIONS}
    metrics["listed_total"] = int(len(listed))
    return {CONTACT_LIST: typed_results(listed, CONTACT_LIST_COLUMNS)}, metrics


def _candidates(customers: "pd.DataFrame", uplift: "pd.DataFrame", settings: ActivationSettings) -> dict[str, "pd.DataFrame"]:
    """Each action's customers, most urgent first (ties by customer_id)."""
    import math

    tiers = list(VALUE_TIERS[: VALUE_TIERS.index(settings.retain_min_value_tier) + 1])
    retain = customers[
        (customers["churn_probability"] >= settings.retain_min_churn_probability) & customers["value_tier"].isin(tiers)
    ]
    value_at_risk = retain["churn_probability"] * retain["predicted_spend_365d"]
    retain = retain.assign(value_at_risk=value_at_risk).sort_values(["value_at_risk", "customer_id"], ascending=[False, True])
    # The top share of every customer the uplift model scored, not of the contactable ones: the
    # share means the same whatever consent removes later.
    top_rank = math.ceil(settings.campaign_top_share * len(uplift))
    campaign = customers[(customers["uplift_rank"] <= top_rank) & (customers["predicted_uplift"] > 0)].sort_values(["uplift_rank", "customer_id"])
    cross_sell = customers[
        (customers["offer_source"] == "rule") & (customers["offer_score"] >= settings.cross_sell_min_confidence)
    ].sort_values(["offer_score", "customer_id"], ascending=[False, True])
    return {"retain": retain, "campaign": campaign, "cross_sell": cross_sell}


def _channel(chosen: "pd.DataFrame") -> "pd.Series":
    """A call for customers worth keeping who can be called, else an email, else a call; None when
    neither is known."""
    import numpy as np
    import pandas as pd

    has_email, has_phone = chosen["email"].notna(), chosen["phone"].notna()
    prefers_call = (chosen["action"] == "retain") & has_phone
    channel = np.where(prefers_call, "phone", np.where(has_email, "email", np.where(has_phone, "phone", None)))
    return pd.Series(channel, index=chosen.index, dtype=object)


def _reason(row) -> str:
    """The one line a CRM user reads beside the name."""
    offer = f"; offer {row.offer_sku}" if isinstance(row.offer_sku, str) else ""
    if row.action == "retain":
        why = f" (top reason: {row.reason_1})" if isinstance(row.reason_1, str) else ""
        return (f"Retain: {row.churn_probability:.0%} risk of no order in 90 days{why}, {row.value_tier} value tier"
                f" ({row.predicted_spend_365d:,.0f} expected next 12 months){offer}")
    if row.action == "campaign":
        return (f"Campaign: contact lifts conversion by {100 * row.predicted_uplift:.1f} pts"
                f" ({row.conversion_if_not_treated:.0%} -> {row.conversion_if_treated:.0%}), uplift rank {int(row.uplift_rank)}{offer}")
    return f"Cross-sell: {row.offer_rule} ({row.offer_score:.0%} of such baskets add it); offer {row.offer_sku}"
