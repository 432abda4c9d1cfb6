"""Churn propensity: the probability that a customer places no order in the 90 days after the as-of
date, with a risk band and the three reasons that raise it most, in words a manager reads.

A trained model (see ml_tasks.contract): `fit(training, as_of_date, settings)` learns from the
labelled snapshots of features.training_set and validates in time; `score(fitted, inputs, ...)`
scores the as-of date's customers of features.customer_features. Seeded everywhere, and rows are
sorted by (snapshot, customer_id) before fitting and by customer_id before scoring, so the same
rows in another order give the same model and the same scores.

Who is scored: every customer with an order known on the as-of date (`order_count > 0`), as the
training rows are (the label "placed no order" means nothing for a contact who never ordered).

Features: the numerical columns of customer_features (FEATURE_COLUMNS; booleans as 0/1) and a 0/1
column per favourite channel. Identifiers, dates (first_seen/first/last order: their information
is in tenure and recency; as_of_date itself would let the model learn the calendar) and
favourite_category (its levels are the catalogue's category names: a column per level would tie
the model's columns to the catalogue of the day) are left out. Nulls mean
"none yet" (no revenue order: no recency; no rating; no campaign received): the trees see NaN
and learn where it goes; the logistic regression gets the median and a missing-indicator column.
No feature looks past its snapshot: dbt computes each snapshot's features from what was known then.

Candidates (`candidate_models`):
- `logistic_regression`, the baseline: signed log1p of the counts, amounts and day counts,
  median imputation with missing indicators, standardisation, L2-penalised (C = 1);
- `random_forest`: bounded for a 300,000-row fit on two cores (forest_* settings: trees, depth,
  leaf size and rows per tree);
- `gradient_boosting`: scikit-learn's HistGradientBoostingClassifier, a fixed number of rounds
  (early stopping would hold out a random share of dated rows).

Validation in time, never a random split of dated rows. The labelled snapshots are ordered by
date: the last is the TEST window, the one before it the SELECTION window, every earlier one
TRAINS. Each candidate is fitted on the training windows and the one with the highest PR-AUC
(average precision) on the selection window is chosen (PR-AUC: the model's use is ranking
customers to contact, and it weighs the top of the ranking). The chosen model's selection-window
scores are then calibrated (`fit_calibrator`): a sigmoid (Platt scaling on the score's logit),
or isotonic regression when its Brier score in a stratified 5-fold cross-validation within the
selection window (one row per customer there, so a random split is fair) is at least 1% lower
(ISOTONIC_MIN_GAIN; the sigmoid keeps the ranking and is smooth, which the reasons need). The
calibrated chosen model and the calibrated baseline are reported on the test window, which chose
nothing: ROC-AUC, PR-AUC, Brier, the base-rate Brier (predicting the training windows' churn rate
for everyone), the Brier skill 1 - Brier / base-rate Brier, and the top-decile lift (churn rate of
the 10% scored highest over the window's churn rate).

The published model is the validated procedure moved one window forward: the chosen candidate
type refitted on every window but the last (training + selection) and calibrated on the last
(test) window, its calibration chosen again there the same way. The last window is out of time
for the refit too (it never trained on it), so the published probabilities are calibrated on the
freshest labels; the reported figures are those of the procedure, measured one window back, on a
window that chose nothing. Publishing the validated fit as is would keep a model a month staler,
calibrated on labels a month older while the churn rate moves (on the simulator it climbs from
21% to 53% over 14 snapshots as lapsed customers accumulate); measured below, the refit ranks and
calibrates a little better three times out of three.

Minimum history: InsufficientData when fewer than three labelled snapshots (one each to train,
choose and test) or when a window has fewer than `min_window_churners` (30) churners or as many
non-churners: the standard error of a ROC-AUC of 0.8 on 30 of each is 0.06 (Hanley and McNeil,
1982), more than half the distance between the floor (0.6) and a coin (0.5); on fewer the floor
would judge noise.

Risk band, for the reader of the table: `high` = more likely than not to place no order in the
next 90 days (churn_probability >= `high_risk_probability`, 0.5); `medium` = at least one chance
in five (`medium_risk_probability`, 0.2); `low` = less. The probabilities are calibrated, so a
band says what it means in every business and on every day. Bands by rank (the top decile of the
training scores "high", the next two "medium") were tried and dropped: where half the customers
lapse, the 70th percentile of the last window's scores was 0.89, so "low" held customers 86%
likely to churn. The fit's `test_risk_bands` says how many customers each band held on the test
window and how many of them churned.

Reasons: for each customer and each REASONS group of feature columns, the change in churn
probability when the group's columns are set to their population value (the median of the last
labelled window's rows; a column null for most of them is set to null, i.e. "none"; the channel
columns to the most common favourite channel): contribution = p(customer) - p(customer with that
group typical). Columns that say one thing form one group (the channel shares and the favourite
channel; spend and orders of the last 90 days), so a reason is not split into small parts. One
prediction per group on a modified matrix, only for the rows whose group differs from typical, in
chunks of `score_chunk_rows`. The three largest positive contributions of at least
`reason_min_contribution` (one percentage point) become reason_1..3 with contribution_1..3
(probability, 0-1); fewer than three: nulls. Each reason is written from the customer's own values
by the group's phrase: "no order in 74 days", "2 unresolved tickets", "3 slow first replies",
"average rating 1.5 stars", "returned 40% of orders (2)", "spend down: €0 in the last 90 days".

Drift: the fitted model keeps a sample of its scores on the last labelled window and of the five
feature columns that move its predictions most there (mean absolute change in probability when
the column alone is set to its typical value); `score` returns their population stability index
against today's values as `metrics["drift_psi"]`. Some drift is expected: the last labelled
window is at least 90 days before the as-of date.

Measured. Dev warehouse: 4,000 simulated customers x 520 days from 2024-01-01 (seed 5), loaded
month by month so each snapshot saw what was known then, dbt built for 2025-06-03: 14 labelled
snapshots 2024-01-31..2025-02-28 (1,618-4,980 rows, churn rate 21%-53%), 52,671 rows.
- Choice (selection window 2025-01-31, PR-AUC): logistic regression 0.898, random forest 0.922,
  gradient boosting 0.925 (chosen).
- Test window 2025-02-28 (4,980 customers, 52.5% churned), chosen and calibrated (sigmoid):
  ROC-AUC 0.909, PR-AUC 0.924, Brier 0.121 against 0.260 for the training base rate (skill 0.53),
  top-decile lift 1.89 (the ceiling at a 52.5% churn rate is 1.90), mean probability 0.512.
  Baseline logistic regression: ROC-AUC 0.900, PR-AUC 0.909, Brier 0.127 (skill 0.51), lift 1.87.
  Bands: high 48% of customers (87% of them churned), medium 22% (37%), low 31% (10%).
- Calibration: cross-validated Brier on the selection window 0.1165 sigmoid, 0.1169 isotonic.
  The gradient boosting's own probabilities are close to calibrated (test Brier 0.1208 raw,
  0.1211 sigmoid, 0.1216 isotonic; deciles of probability within 5 points of their churn rates):
  the calibration mostly corrects the mean when the churn rate moves. In the three checks below the
  sigmoid moved the mean probability 0.4-2.2 points nearer the churn rate and lowered the Brier
  by 0.0002-0.0004.
- As a run on day S would see it (fit on the snapshots whose 90-day labels were complete by S,
  score the customers at S, compare with their churn): ROC-AUC / Brier at S = 2024-12-31,
  2025-01-31, 2025-02-28: published (refit) 0.893 / 0.1327, 0.902 / 0.1267, 0.905 / 0.1241;
  validated fit as is 0.892 / 0.1337, 0.899 / 0.1289, 0.902 / 0.1258. Gradient boosting chosen
  each time. With every earlier snapshot (no 90-day gap): 0.899, 0.907, 0.909.
- Scale, on two cores shared with other processes (they make the spread; the low figures are
  the quiet runs): fit on 300,000 rows (the dev rows resampled with jitter; 244,175 of them
  training) 21-185 s, peak RSS 1.0 GB (0.3 GB of it the input); score 1,000,000 customers
  41-127 s (45 s with a random forest chosen), peak RSS 1.1 GB (0.6 GB the input); the pickled
  model 0.9 MB.
- IBM telco churn (tests/test_churn_telco.py; 7,043 customers, no dates: stratified 5-fold CV with
  the choice nested in each fold): ROC-AUC 0.850, Brier 0.133 (skill 0.32); the logistic
  regression chosen in every fold.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ml_tasks.contract import (CUSTOMER_FEATURE_NUMBERS, BadParameter, InsufficientData, check_range, iso_day,
                               rounded_for_json, typed_results)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

MODEL_VERSION = "churn-1"
TRAINING = "features.training_set"
FEATURES = "features.customer_features"
SCORES = "ml.churn_scores"
LABEL = "is_churned"
SNAPSHOT = "as_of_date"
MIN_SNAPSHOTS = 3  # one or more to train on, one to choose and calibrate, one to test
REASONS_PER_CUSTOMER = 3
DRIFT_FEATURES = 5

SCORE_COLUMNS: dict[str, str] = {
    "customer_id": "string",
    "churn_probability": "double",
    "risk_band": "string",
    "reason_1": "string",
    "contribution_1": "double",
    "reason_2": "string",
    "contribution_2": "double",
    "reason_3": "string",
    "contribution_3": "double",
}
RISK_BANDS = ("high", "medium", "low")

# Numerical feature columns, as customer_features and training_set hold them.
NUMERIC_FEATURES: tuple[str, ...] = CUSTOMER_FEATURE_NUMBERS
# Shares, rates, ratings and flags keep their scale in the logistic regression; every other
# column is a count, an amount or a number of days, skewed to the right: it is log-scaled.
_BOUNDED_FEATURES = frozenset({
    "is_crm_contact", "return_rate", "favourite_category_share", "discount_share", "web_share",
    "store_share", "phone_share", "marketing_opt_in", "average_satisfaction", "campaign_response_rate",
})
CHANNELS = ("web", "store", "phone")
CHANNEL_COLUMNS = tuple(f"favourite_channel_{channel}" for channel in CHANNELS)
MATRIX_COLUMNS: tuple[str, ...] = NUMERIC_FEATURES + CHANNEL_COLUMNS
FEATURE_COLUMNS: tuple[str, ...] = NUMERIC_FEATURES + ("favourite_channel",)
# What fit reads of the training set, so the runner reads only these.
TRAINING_COLUMNS: tuple[str, ...] = ("customer_id", SNAPSHOT, *FEATURE_COLUMNS, LABEL)

# Quality floors on the test window (the last labelled snapshot, which neither trained nor chose
# the model). test_roc_auc: measured 0.878-0.909 on the dev warehouse (four fits, 9-14 snapshots)
# and 0.825-0.862 on the telco folds; at 0.6 or below a model ranks churners barely better than a
# coin (0.5) and is refused. test_brier_skill (1 - Brier / Brier of the training base rate):
# measured 0.46-0.53 on the dev warehouse, 0.28-0.35 on the telco folds; below 0 the probabilities
# are worse than telling everyone the base rate, and must not be published.
QUALITY_FLOORS: dict[str, float] = {"test_roc_auc": 0.6, "test_brier_skill": 0.0}

CANDIDATES = ("logistic_regression", "random_forest", "gradient_boosting")
BASELINE = "logistic_regression"
CALIBRATION_METHODS = ("sigmoid", "isotonic")
CALIBRATION_FOLDS = 5
# Measured on the dev warehouse (9 fits): the isotonic regression's cross-validated Brier was lower
# once, by 0.1%, and on the next window its Brier was 0.7% higher and its ROC-AUC 0.001 lower than
# the uncalibrated model's; the sigmoid's was lower in the other eight. A gain under 1% is noise.
ISOTONIC_MIN_GAIN = 0.01


@dataclass(frozen=True)
class ChurnSettings:
    training_max_rows: int = field(default=300_000, metadata={"doc": (
        "churn_propensity: training rows read at most; past it the runner reads the rows of a"
        " customer-hash sample (all snapshots of the same customers)")})
    random_state: int = field(default=0, metadata={"doc": "churn_propensity: seed of every model and split"})
    min_window_churners: int = field(default=30, metadata={"doc": (
        "churn_propensity: churners (and as many non-churners) each of the training, selection and"
        " test windows needs; fewer: insufficient data")})
    # Bounds measured on the dev warehouse (selection PR-AUC; prediction time per 200,000 rows):
    # 50 trees 0.922, 100 trees 0.922 at twice the time (0.87 s against 0.46 s), depth 10 0.918.
    forest_trees: int = field(default=50, metadata={"doc": "churn_propensity: random forest trees"})
    forest_max_depth: int = field(default=14, metadata={"doc": "churn_propensity: random forest tree depth at most"})
    forest_min_samples_leaf: int = field(default=20, metadata={"doc": "churn_propensity: random forest rows per leaf at least"})
    forest_max_samples: int = field(default=50_000, metadata={"doc": "churn_propensity: rows each forest tree is grown on at most"})
    # 100 rounds at 0.1 scored as 200 at 0.05 (selection PR-AUC 0.925 and 0.924), at half the
    # cost of the reasons' predictions.
    boosting_rounds: int = field(default=100, metadata={"doc": "churn_propensity: gradient boosting rounds"})
    boosting_learning_rate: float = field(default=0.1, metadata={"doc": "churn_propensity: gradient boosting learning rate"})
    n_jobs: int = field(default=2, metadata={"doc": "churn_propensity: cores the forest and the boosting use"})
    score_chunk_rows: int = field(default=200_000, metadata={"doc": "churn_propensity: rows scored (and explained) at once"})
    high_risk_probability: float = field(default=0.5, metadata={"doc": (
        "churn_propensity: churn probability from which a customer is high risk (0.5: more likely than not)")})
    medium_risk_probability: float = field(default=0.2, metadata={"doc": (
        "churn_propensity: churn probability from which a customer is medium risk (0.2: one chance in five)")})
    reason_min_contribution: float = field(default=0.01, metadata={"doc": (
        "churn_propensity: smallest rise in churn probability (0-1) worth naming as a reason")})

    def __post_init__(self) -> None:
        check_range("training_max_rows", self.training_max_rows, minimum=1_000, maximum=10_000_000, kind=int)
        check_range("random_state", self.random_state, minimum=0, maximum=2**32 - 1, kind=int)
        check_range("min_window_churners", self.min_window_churners, minimum=5, kind=int)
        check_range("forest_trees", self.forest_trees, minimum=10, maximum=1_000, kind=int)
        check_range("forest_max_depth", self.forest_max_depth, minimum=2, maximum=40, kind=int)
        check_range("forest_min_samples_leaf", self.forest_min_samples_leaf, minimum=1, maximum=10_000, kind=int)
        check_range("forest_max_samples", self.forest_max_samples, minimum=1_000, maximum=10_000_000, kind=int)
        check_range("boosting_rounds", self.boosting_rounds, minimum=10, maximum=2_000, kind=int)
        check_range("boosting_learning_rate", self.boosting_learning_rate, minimum=0.001, maximum=1.0)
        check_range("n_jobs", self.n_jobs, minimum=1, maximum=64, kind=int)
        check_range("score_chunk_rows", self.score_chunk_rows, minimum=1_000, maximum=5_000_000, kind=int)
        check_range("high_risk_probability", self.high_risk_probability, minimum=0.01, maximum=0.99)
        check_range("medium_risk_probability", self.medium_risk_probability, minimum=0.0, maximum=0.99)
        if self.medium_risk_probability >= self.high_risk_probability:
            raise BadParameter(
                f"medium_risk_probability: got {self.medium_risk_probability!r}, expected less than"
                f" high_risk_probability ({self.high_risk_probability!r})"
            )
        check_range("reason_min_contribution", self.reason_min_contribution, minimum=0.0, maximum=0.5)


# ---- reasons: which columns move together, and how a manager reads their values -----------------

def _n(value: float) -> int:
    """A count as a whole number; a null count (none recorded) is 0."""
    return 0 if math.isnan(value) else int(value)


def _plural(count: float, singular: str, plural: str | None = None) -> str:
    return f"{_n(count)} {singular if _n(count) == 1 else plural or singular + 's'}"


def _money(amount: float) -> str:
    return f"€{amount:,.0f}"


def _days(value: float) -> str:
    return _plural(value, "day")


def _recency(v: Mapping[str, float], typical: Mapping[str, float]) -> str:
    if math.isnan(v["recency_days"]):
        return "no completed order"
    if math.isnan(typical["recency_days"]) or v["recency_days"] >= typical["recency_days"]:
        return f"no order in {_days(v['recency_days'])}"
    return f"last order {_days(v['recency_days'])} ago"


def _frequency(v, typical) -> str:
    if not _n(v["frequency"]):
        return f"none of {_plural(v['order_count'], 'order')} completed"
    if _n(v["frequency"]) <= typical["frequency"]:
        return f"only {_plural(v['frequency'], 'order')}"
    return _plural(v["frequency"], "order")


def _recent_spend(v, typical) -> str:
    spent = 0.0 if math.isnan(v["monetary_last_90_days"]) else v["monetary_last_90_days"]
    orders = _plural(v["frequency_last_90_days"], "order")
    if spent <= typical["monetary_last_90_days"]:
        return f"spend down: {_money(spent)} in the last 90 days ({orders})"
    return f"{_money(spent)} spent in the last 90 days ({orders})"


def _lifetime_spend(v, typical) -> str:
    spent = 0.0 if math.isnan(v["monetary"]) else v["monetary"]
    prefix = "only " if spent <= typical["monetary"] else ""
    return f"{prefix}{_money(spent)} spent in all"


def _basket(v, typical) -> str:
    if math.isnan(v["average_order_value"]):
        return "no completed order"
    items = "" if math.isnan(v["items_per_order"]) else f", {v['items_per_order']:.1f} items"
    size = "small orders" if _n(v["average_order_value"]) <= typical["average_order_value"] else "large orders"
    return f"{size}: {_money(v['average_order_value'])} on average{items}"


def _tenure(v, typical) -> str:
    if _n(v["tenure_days"]) <= typical["tenure_days"]:
        return f"new customer: first seen {_days(v['tenure_days'])} ago"
    return f"customer for {_days(v['tenure_days'])}"


def _returns(v, typical) -> str:
    if math.isnan(v["return_rate"]) or not _n(v["returned_orders"]):
        return "no order returned"
    return f"returned {v['return_rate']:.0%} of orders ({_n(v['returned_orders'])})"


def _cancellations(v, typical) -> str:
    return f"{_plural(v['cancelled_orders'], 'cancelled order')}" if _n(v["cancelled_orders"]) else "no cancelled order"


def _discount(v, typical) -> str:
    if math.isnan(v["discount_share"]):
        return "no completed order"
    return f"average discount {v['discount_share']:.0%}"


def _categories(v, typical) -> str:
    if math.isnan(v["distinct_categories"]) or v["distinct_categories"] == 0:
        return "no category bought"
    if _n(v["distinct_categories"]) == 1:
        return "buys from only 1 category"
    return f"buys from {_n(v['distinct_categories'])} categories"


_CHANNEL_WORDS = {"web": "online", "store": "in store", "phone": "by phone"}


def _channel(v, typical) -> str:
    shares = {channel: v[f"{channel}_share"] for channel in CHANNELS}
    if all(math.isnan(share) for share in shares.values()):
        return "no completed order"
    channel = max(CHANNELS, key=lambda name: -1.0 if math.isnan(shares[name]) else shares[name])
    return f"buys mostly {_CHANNEL_WORDS[channel]} ({shares[channel]:.0%} of orders)"


def _marketing(v, typical) -> str:
    if math.isnan(v["marketing_opt_in"]):
        return "no CRM contact" if not _n(v["is_crm_contact"]) else "marketing consent unknown"
    return "opted in to marketing" if _n(v["marketing_opt_in"]) else "not opted in to marketing"


def _open_tickets(v, typical) -> str:
    if _n(v["unresolved_tickets"]):
        return _plural(v["unresolved_tickets"], "unresolved ticket")
    if _n(v["open_tickets"]):
        return _plural(v["open_tickets"], "open ticket")
    return "no open ticket"


def _slow_replies(v, typical) -> str:
    return _plural(v["slow_reply_tickets"], "slow first reply", "slow first replies") if _n(v["slow_reply_tickets"]) else "no slow reply"


def _satisfaction(v, typical) -> str:
    if math.isnan(v["average_satisfaction"]):
        return "no ticket rated"
    unhappy = f", {_plural(v['dissatisfied_tickets'], 'poor rating')}" if _n(v["dissatisfied_tickets"]) else ""
    return f"average rating {v['average_satisfaction']:.1f} stars{unhappy}"


def _tickets(v, typical) -> str:
    if not _n(v["tickets_opened"]):
        return "no ticket opened"
    if _n(v["tickets_opened_last_90_days"]):
        return f"{_plural(v['tickets_opened_last_90_days'], 'ticket')} in the last 90 days"
    return f"{_plural(v['tickets_opened'], 'ticket')}, the last {_days(v['days_since_last_ticket'])} ago"


def _complaints(v, typical) -> str:
    return _plural(v["complaint_interactions"], "complaint") if _n(v["complaint_interactions"]) else "no complaint"


def _contacts(v, typical) -> str:
    if _n(v["interactions_last_90_days"]):
        return f"{_plural(v['interactions_last_90_days'], 'contact')} with us in the last 90 days"
    if _n(v["interactions"]):
        return f"no contact with us in the last 90 days ({_n(v['interactions'])} before)"
    return "never in contact with us"


def _campaigns(v, typical) -> str:
    if not _n(v["campaigns_received"]):
        return "no campaign received"
    if not _n(v["campaign_conversions"]):
        return f"no campaign response ({_n(v['campaigns_received'])} received)"
    return f"bought in {_n(v['campaign_conversions'])} of {_plural(v['campaigns_received'], 'campaign')}"


# Reason group -> (the matrix columns it sets to typical values together, its phrase). Columns that
# say one thing are one group (the channel shares and favourite channel; frequency and order count),
# so a reason is not split into parts that each look small. Every matrix column is in one group.
REASONS: dict[str, tuple[tuple[str, ...], Callable[[Mapping[str, float], Mapping[str, float]], str]]] = {
    "recency": (("recency_days",), _recency),
    "frequency": (("frequency", "order_count"), _frequency),
    "recent_spend": (("frequency_last_30_days", "frequency_last_90_days", "monetary_last_90_days"), _recent_spend),
    "lifetime_spend": (("monetary",), _lifetime_spend),
    "basket": (("average_order_value", "items_per_order"), _basket),
    "tenure": (("tenure_days",), _tenure),
    "returns": (("returned_orders", "return_rate"), _returns),
    "cancellations": (("cancelled_orders",), _cancellations),
    "discount": (("discount_share",), _discount),
    "categories": (("distinct_categories", "favourite_category_share"), _categories),
    "channel": (("web_share", "store_share", "phone_share", *CHANNEL_COLUMNS), _channel),
    "marketing": (("marketing_opt_in", "is_crm_contact"), _marketing),
    "open_tickets": (("open_tickets", "unresolved_tickets"), _open_tickets),
    "slow_replies": (("slow_reply_tickets",), _slow_replies),
    "satisfaction": (("average_satisfaction", "dissatisfied_tickets", "rated_tickets"), _satisfaction),
    "tickets": (("tickets_opened", "tickets_opened_last_90_days", "days_since_last_ticket"), _tickets),
    "complaints": (("complaint_interactions",), _complaints),
    "contacts": (("interactions", "interactions_last_90_days"), _contacts),
    "campaigns": (("campaigns_received", "campaign_conversions", "campaign_response_rate"), _campaigns),
}


# ---- the fitted model -----------------------------------------------------------------------------

@dataclass
class Calibrator:
    """Maps a model's score to a probability: `sigmoid` (a logistic regression on the score's logit,
    Platt scaling) or `isotonic` (a non-decreasing step function)."""

    method: str
    mapping: Any

    def __call__(self, scores: "np.ndarray") -> "np.ndarray":
        import numpy as np

        if self.method == "sigmoid":
            return self.mapping.predict_proba(_logit(scores).reshape(-1, 1))[:, 1]
        return np.clip(self.mapping.predict(scores), 0.0, 1.0)


@dataclass
class CalibratedModel:
    name: str  # one of CANDIDATES
    estimator: Any  # fitted on a float matrix with NaN for nulls
    calibrator: Calibrator

    def predict(self, matrix: "np.ndarray") -> "np.ndarray":
        return self.calibrator(self.estimator.predict_proba(matrix)[:, 1])


@dataclass
class ChurnModel:
    """What `score` needs: the published calibrated model, each matrix column's typical value (for
    the reasons), drift references and what it was trained on."""

    model: CalibratedModel
    columns: tuple[str, ...]
    typical: dict[str, float]
    reference: dict[str, "np.ndarray"]
    trained_through: str  # the last snapshot the published model learnt from
    calibrated_on: str  # the snapshot its probabilities were calibrated on (the last labelled one)
    model_version: str = MODEL_VERSION


@dataclass
class Validated:
    """The outcome of one train / select-and-calibrate split: the chosen candidate and the baseline,
    each calibrated on the selection rows, and what the choice saw."""

    chosen: CalibratedModel
    baseline: CalibratedModel
    selection_pr_auc: dict[str, float]
    calibration_brier: dict[str, float]


# ---- fit ------------------------------------------------------------------------------------------

def fit(training: Mapping[str, "pd.DataFrame"], as_of_date: dt.date, settings: ChurnSettings) -> tuple[ChurnModel, dict]:
    """Choose, calibrate and test a churn model in time on the labelled snapshots of the training
    set, then refit it one window forward for publishing (see the module docstring)."""
    from threadpoolctl import threadpool_limits

    # The boosting's OpenMP threads default to every core the machine has; on a shared worker
    # more threads than cores wait on each other (measured: predictions 5x slower).
    with threadpool_limits(limits=settings.n_jobs):
        return _fit(training, as_of_date, settings)


def _fit(training: Mapping[str, "pd.DataFrame"], as_of_date: dt.date, settings: ChurnSettings) -> tuple[ChurnModel, dict]:
    import numpy as np

    rows = _labelled_rows(training[TRAINING], as_of_date)
    rows_read = len(training[TRAINING])
    window = rows[SNAPSHOT].to_numpy()
    snapshots = np.unique(window)
    _check_history(rows, snapshots, settings)
    matrix = feature_matrix(rows)
    label = rows[LABEL].to_numpy(dtype=bool).astype(int)
    test = np.flatnonzero(window == snapshots[-1])
    selection = np.flatnonzero(window == snapshots[-2])
    train = np.flatnonzero(window < snapshots[-2])

    validated = fit_validated(matrix, label, train, selection, settings, log_columns=log_scaled_columns(MATRIX_COLUMNS))
    base_rate = float(label[train].mean())
    metrics: dict[str, Any] = {
        "rows_read": rows_read,
        "snapshots": len(snapshots),
        "train_window": f"{iso_day(snapshots[0])}..{iso_day(snapshots[-3])}",
        "selection_window": iso_day(snapshots[-2]),
        "test_window": iso_day(snapshots[-1]),
        "train_rows": len(train),
        "selection_rows": len(selection),
        "test_rows": len(test),
        "train_churn_rate": base_rate,
        "selection_churn_rate": float(label[selection].mean()),
        "test_churn_rate": float(label[test].mean()),
        "candidates_selection_pr_auc": validated.selection_pr_auc,
        "chosen_model": validated.chosen.name,
        "calibration_method": validated.chosen.calibrator.method,
        "calibration_cv_brier": validated.calibration_brier,
    }
    for prefix, model in (("test", validated.chosen), ("baseline_test", validated.baseline)):
        figures = evaluate(model.predict(matrix[test]), label[test], base_rate)
        metrics.update({f"{prefix}_{name}": value for name, value in figures.items()})
    metrics["test_risk_bands"] = band_figures(validated.chosen.predict(matrix[test]), label[test], settings)
    del validated

    # Published: the chosen type refitted on training + selection windows, calibrated on the last.
    refit = np.flatnonzero(window < snapshots[-1])
    estimator = candidate_models(settings, log_scaled_columns(MATRIX_COLUMNS))[metrics["chosen_model"]]
    fit_candidate(estimator, matrix[refit], label[refit])
    latest = matrix[test]
    calibrator, refit_brier = fit_calibrator(estimator.predict_proba(latest)[:, 1], label[test], settings.random_state)
    published = CalibratedModel(metrics["chosen_model"], estimator, calibrator)

    typical = typical_values(latest)
    latest_scores = published.predict(latest)
    importance = column_importance(published, latest, typical)
    top_columns = [column for column, _ in sorted(importance.items(), key=lambda item: (-item[1], item[0]))[:DRIFT_FEATURES]]
    fitted = ChurnModel(
        model=published,
        columns=MATRIX_COLUMNS,
        typical={column: float(value) for column, value in zip(MATRIX_COLUMNS, typical)},
        reference=_drift_reference(latest_scores, latest, top_columns),
        trained_through=iso_day(snapshots[-2]),
        calibrated_on=iso_day(snapshots[-1]),
    )
    metrics.update({
        "published_fit_rows": len(refit),
        "published_calibration_rows": len(test),
        "published_calibration_method": calibrator.method,
        "published_calibration_cv_brier": refit_brier,
        "top_features": {column: importance[column] for column in top_columns},
    })
    return fitted, rounded_for_json(metrics)


def _labelled_rows(frame: "pd.DataFrame", as_of_date: dt.date) -> "pd.DataFrame":
    """Rows with a label, of snapshots on or before the as-of date (a rerun for an earlier date
    must not learn from later snapshots), sorted so row order never matters."""
    import pandas as pd

    missing = sorted(set(TRAINING_COLUMNS) - set(frame.columns))
    if missing:
        raise ValueError(f"{TRAINING}: missing columns {', '.join(missing)}; churn reads {', '.join(TRAINING_COLUMNS)}")
    rows = frame.loc[frame[LABEL].notna(), list(TRAINING_COLUMNS)].copy()
    rows[SNAPSHOT] = pd.to_datetime(rows[SNAPSHOT]).dt.normalize()
    rows = rows[rows[SNAPSHOT] <= pd.Timestamp(as_of_date)]
    return rows.sort_values([SNAPSHOT, "customer_id"], kind="stable").reset_index(drop=True)


def _check_history(rows: "pd.DataFrame", snapshots: "np.ndarray", settings: ChurnSettings) -> None:
    if len(snapshots) < MIN_SNAPSHOTS:
        held = ", ".join(iso_day(s) for s in snapshots) or "none"
        raise InsufficientData(
            f"{TRAINING} has {len(snapshots)} labelled snapshots ({held}); churn needs at least {MIN_SNAPSHOTS}:"
            " earlier ones to train on, one to choose and calibrate the model, the last to test it"
        )
    churned = rows[LABEL].astype(bool)
    windows = {"training": rows[SNAPSHOT] < snapshots[-2], "selection": rows[SNAPSHOT] == snapshots[-2],
               "test": rows[SNAPSHOT] == snapshots[-1]}
    for name, in_window in windows.items():
        churners, stayers = int(churned[in_window].sum()), int((~churned[in_window]).sum())
        if min(churners, stayers) < settings.min_window_churners:
            raise InsufficientData(
                f"{TRAINING}: the {name} window has {churners} churners and {stayers} non-churners of"
                f" {churners + stayers} rows; each needs at least min_window_churners = {settings.min_window_churners}"
                " for its ROC-AUC and PR-AUC to mean something"
            )


def feature_matrix(frame: "pd.DataFrame") -> "np.ndarray":
    """The MATRIX_COLUMNS of `frame` as float64, NaN for nulls: numerical columns as they are
    (booleans 0/1), favourite_channel as one 0/1 column per channel (all 0 without one)."""
    import numpy as np
    import pandas as pd

    matrix = np.empty((len(frame), len(MATRIX_COLUMNS)), dtype=np.float64)
    for position, column in enumerate(NUMERIC_FEATURES):
        values = frame[column]
        if pd.api.types.is_bool_dtype(values.dtype) or pd.api.types.is_object_dtype(values.dtype):
            values = values.astype("boolean").astype("Float64")  # a flag with nulls arrives as objects
        matrix[:, position] = pd.to_numeric(values).to_numpy(dtype=np.float64, na_value=np.nan)
    channel = frame["favourite_channel"].astype("str").to_numpy()
    for offset, name in enumerate(CHANNELS):
        matrix[:, len(NUMERIC_FEATURES) + offset] = channel == name
    return matrix


def log_scaled_columns(columns: Sequence[str]) -> tuple[int, ...]:
    """Positions of the columns the logistic regression log-scales (counts, amounts, days)."""
    return tuple(i for i, column in enumerate(columns) if column in NUMERIC_FEATURES and column not in _BOUNDED_FEATURES)


# ---- candidates, choice, calibration, evaluation: on any matrix and any split -------------------

def candidate_models(settings: ChurnSettings, log_columns: Sequence[int] = ()) -> dict[str, Any]:
    """Unfitted candidates by name (CANDIDATES), for a float matrix with NaN for nulls; `log_columns`
    are the positions the logistic regression takes the signed log1p of."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    log_scale = ColumnTransformer(
        [("log", FunctionTransformer(_signed_log1p), list(log_columns))], remainder="passthrough"
    )
    return {
        "logistic_regression": make_pipeline(
            log_scale,
            SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
            StandardScaler(),
            LogisticRegression(C=1.0, max_iter=2_000),
        ),
        "random_forest": RandomForestClassifier(
            n_estimators=settings.forest_trees,
            max_depth=settings.forest_max_depth,
            min_samples_leaf=settings.forest_min_samples_leaf,
            max_samples=settings.forest_max_samples,  # capped at the rows by fit_candidate
            max_features="sqrt",
            n_jobs=settings.n_jobs,
            random_state=settings.random_state,
        ),
        "gradient_boosting": HistGradientBoostingClassifier(
            max_iter=settings.boosting_rounds,
            learning_rate=settings.boosting_learning_rate,
            max_leaf_nodes=31,
            min_samples_leaf=50,
            l2_regularization=1.0,
            early_stopping=False,
            random_state=settings.random_state,
        ),
    }


def fit_candidate(estimator: Any, matrix: "np.ndarray", label: "np.ndarray") -> Any:
    """Fit one candidate; a forest grows each tree on at most forest_max_samples rows (a share when
    there are more rows than that, all rows otherwise)."""
    if hasattr(estimator, "max_samples") and isinstance(estimator.max_samples, int):
        estimator.set_params(max_samples=None if estimator.max_samples >= len(label) else estimator.max_samples)
    return estimator.fit(matrix, label)


def fit_validated(
    matrix: "np.ndarray",
    label: "np.ndarray",
    train: "np.ndarray",
    selection: "np.ndarray",
    settings: ChurnSettings,
    log_columns: Sequence[int] = (),
) -> Validated:
    """Fit every candidate on the `train` rows, choose the one with the highest PR-AUC on the
    `selection` rows (ties: the earlier in CANDIDATES, the simpler), and calibrate it and the
    baseline on the selection rows' scores."""
    from sklearn.metrics import average_precision_score

    scores, fitted, selection_pr_auc = {}, {}, {}
    for name, estimator in candidate_models(settings, log_columns).items():
        fitted[name] = fit_candidate(estimator, matrix[train], label[train])
        scores[name] = fitted[name].predict_proba(matrix[selection])[:, 1]
        selection_pr_auc[name] = float(average_precision_score(label[selection], scores[name]))
    chosen = max(CANDIDATES, key=lambda name: (selection_pr_auc[name], -CANDIDATES.index(name)))
    calibrator, calibration_brier = fit_calibrator(scores[chosen], label[selection], settings.random_state)
    baseline_calibrator, _ = fit_calibrator(scores[BASELINE], label[selection], settings.random_state)
    return Validated(
        chosen=CalibratedModel(chosen, fitted[chosen], calibrator),
        baseline=CalibratedModel(BASELINE, fitted[BASELINE], baseline_calibrator),
        selection_pr_auc=selection_pr_auc,
        calibration_brier=calibration_brier,
    )


def fit_calibrator(scores: "np.ndarray", label: "np.ndarray", random_state: int = 0) -> tuple[Calibrator, dict[str, float]]:
    """A calibrator fitted on (scores, label), and each method's mean Brier score over a stratified
    CALIBRATION_FOLDS-fold cross-validation on them. The sigmoid unless the isotonic regression's
    cross-validated Brier is lower by ISOTONIC_MIN_GAIN or more: the sigmoid keeps the model's
    ranking (isotonic plateaus tie customers) and is smooth, so a reason's contribution is never
    lost inside a plateau."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    folds = StratifiedKFold(n_splits=CALIBRATION_FOLDS, shuffle=True, random_state=random_state)
    brier = {}
    for method in CALIBRATION_METHODS:
        squared_errors = np.empty(len(label))
        for fit_rows, held_rows in folds.split(scores.reshape(-1, 1), label):
            calibrated = _calibrator(method, scores[fit_rows], label[fit_rows])(scores[held_rows])
            squared_errors[held_rows] = (calibrated - label[held_rows]) ** 2
        brier[method] = float(squared_errors.mean())
    method = "isotonic" if brier["isotonic"] <= (1 - ISOTONIC_MIN_GAIN) * brier["sigmoid"] else "sigmoid"
    return _calibrator(method, scores, label), brier


def _calibrator(method: str, scores: "np.ndarray", label: "np.ndarray") -> Calibrator:
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    if method == "sigmoid":
        return Calibrator(method, LogisticRegression(C=1e6, max_iter=1_000).fit(_logit(scores).reshape(-1, 1), label))
    return Calibrator(method, IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, label))


def evaluate(probability: "np.ndarray", label: "np.ndarray", base_rate: float) -> dict[str, float]:
    """ROC-AUC, PR-AUC, Brier, the Brier of predicting `base_rate` for everyone, the Brier skill
    (1 - Brier / base-rate Brier), the top-decile lift (churn rate of the tenth scored highest,
    ties in row order, over the overall churn rate), and the mean probability (calibration in the
    large: close to the churn rate when calibrated)."""
    import numpy as np
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    brier = float(brier_score_loss(label, probability))
    base_rate_brier = float(np.mean((label - base_rate) ** 2))
    top = np.argsort(-probability, kind="stable")[: max(1, math.ceil(0.1 * len(label)))]
    return {
        "roc_auc": float(roc_auc_score(label, probability)),
        "pr_auc": float(average_precision_score(label, probability)),
        "brier": brier,
        "base_rate_brier": base_rate_brier,
        "brier_skill": 1 - brier / base_rate_brier if base_rate_brier > 0 else None,
        "top_decile_lift": float(label[top].mean() / label.mean()),
        "mean_probability": float(probability.mean()),
    }


def risk_bands(probability: "np.ndarray", settings: ChurnSettings) -> "np.ndarray":
    """'high' from high_risk_probability, 'medium' from medium_risk_probability, else 'low'."""
    import numpy as np

    return np.where(probability >= settings.high_risk_probability, "high",
                    np.where(probability >= settings.medium_risk_probability, "medium", "low"))


def band_figures(probability: "np.ndarray", label: "np.ndarray", settings: ChurnSettings) -> dict[str, dict[str, float | None]]:
    """Per risk band: its share of the rows and the churn rate observed in it (None when empty)."""
    band = risk_bands(probability, settings)
    return {
        name: {"share": float((band == name).mean()),
               "churn_rate": float(label[band == name].mean()) if (band == name).any() else None}
        for name in RISK_BANDS
    }


def _signed_log1p(values: "np.ndarray") -> "np.ndarray":
    import numpy as np

    return np.sign(values) * np.log1p(np.abs(values))


def _logit(scores: "np.ndarray") -> "np.ndarray":
    import numpy as np

    clipped = np.clip(scores, 1e-6, 1 - 1e-6)
    return np.log(clipped / (1 - clipped))


# ---- typical values, contributions, importance --------------------------------------------------

def typical_values(matrix: "np.ndarray") -> "np.ndarray":
    """Per matrix column, the population value a reason compares a customer with: the median of
    the non-null values, or null (NaN) when most rows are null (most customers have "none");
    the channel columns: the most common favourite channel's."""
    import numpy as np

    typical = np.full(matrix.shape[1], np.nan)
    for position in range(len(NUMERIC_FEATURES)):
        values = matrix[:, position]
        present = values[~np.isnan(values)]
        if len(present) * 2 > len(values):
            typical[position] = np.median(present)
    channels = matrix[:, len(NUMERIC_FEATURES):]
    typical[len(NUMERIC_FEATURES):] = 0.0
    typical[len(NUMERIC_FEATURES) + int(np.argmax(channels.sum(axis=0)))] = 1.0
    return typical


def contributions(model: CalibratedModel, matrix: "np.ndarray", typical: "np.ndarray",
                  groups: Sequence[Sequence[int]]) -> tuple["np.ndarray", "np.ndarray"]:
    """The probabilities of `matrix`'s rows and, per group of column positions, how much higher
    each is than with those columns set to their typical values (rows x groups). Only the rows
    whose group differs from typical are predicted again (the others change by 0): most
    customers have no complaint, no cancelled order, no open ticket."""
    import numpy as np

    probability = model.predict(matrix)
    effects = np.zeros((len(matrix), len(groups)))
    for index, positions in enumerate(groups):
        values, reference = matrix[:, positions], typical[positions]
        same = (values == reference) | (np.isnan(values) & np.isnan(reference))
        rows = np.flatnonzero(~same.all(axis=1))
        if len(rows):
            changed = matrix[rows]
            changed[:, positions] = reference
            effects[rows, index] = probability[rows] - model.predict(changed)
    return probability, effects


def column_importance(model: CalibratedModel, matrix: "np.ndarray", typical: "np.ndarray") -> dict[str, float]:
    """Per matrix column, the mean absolute change in probability when it alone is set to its
    typical value: how much the model leans on it."""
    import numpy as np

    _, effects = contributions(model, matrix, typical, [[position] for position in range(matrix.shape[1])])
    return {column: float(value) for column, value in zip(MATRIX_COLUMNS, np.abs(effects).mean(axis=0))}


def _drift_reference(scores: "np.ndarray", matrix: "np.ndarray", columns: Sequence[str]) -> dict[str, "np.ndarray"]:
    from ml_tasks.monitoring import reference_sample

    reference = {"churn_probability": reference_sample(scores)}
    for column in columns:
        reference[column] = reference_sample(matrix[:, MATRIX_COLUMNS.index(column)])
    return reference


# ---- score ----------------------------------------------------------------------------------------

def score(fitted: ChurnModel, inputs: Mapping[str, "pd.DataFrame"], as_of_date: dt.date,
          settings: ChurnSettings) -> tuple[dict[str, "pd.DataFrame"], dict]:
    """Churn probability, risk band and up to three reasons for every customer of the as-of date
    with an order (see the module docstring for the bands and reasons)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=settings.n_jobs):
        return _score(fitted, inputs, settings)


def _score(fitted: ChurnModel, inputs: Mapping[str, "pd.DataFrame"], settings: ChurnSettings) -> tuple[dict[str, "pd.DataFrame"], dict]:
    import numpy as np
    import pandas as pd

    from ml_tasks.monitoring import drift_report

    features = inputs[FEATURES]
    order_count = pd.to_numeric(features["order_count"]).fillna(0)
    customers = features[order_count.to_numpy() > 0].sort_values("customer_id", kind="stable").reset_index(drop=True)
    typical = np.array([fitted.typical[column] for column in fitted.columns])
    groups = [[fitted.columns.index(column) for column in columns] for columns, _ in REASONS.values()]
    probability = np.empty(len(customers))
    reasons = {f"reason_{rank}": np.full(len(customers), None, dtype=object) for rank in range(1, REASONS_PER_CUSTOMER + 1)}
    amounts = {f"contribution_{rank}": np.full(len(customers), np.nan) for rank in range(1, REASONS_PER_CUSTOMER + 1)}
    first_groups = np.full(len(customers), None, dtype=object)
    drift_columns = [column for column in fitted.reference if column in fitted.columns]
    current = {column: np.empty(len(customers)) for column in drift_columns}
    for start in range(0, len(customers), settings.score_chunk_rows):
        rows = slice(start, start + settings.score_chunk_rows)
        matrix = feature_matrix(customers.iloc[rows])
        for column in drift_columns:
            current[column][rows] = matrix[:, fitted.columns.index(column)]
        probability[rows], effects = contributions(fitted.model, matrix, typical, groups)
        _name_reasons(matrix, effects, typical, fitted.columns, settings.reason_min_contribution, start, reasons, amounts,
                      first_groups)

    band = risk_bands(probability, settings)
    scores = pd.DataFrame({"customer_id": customers["customer_id"].astype("str"), "churn_probability": np.round(probability, 6),
                           "risk_band": band, **reasons, **{k: np.round(v, 6) for k, v in amounts.items()}})
    scores = typed_results(scores, SCORE_COLUMNS)
    current["churn_probability"] = probability
    counts = scores["risk_band"].value_counts()
    top_reasons = pd.Series(first_groups, dtype="str").dropna().value_counts()
    metrics = {
        "model_version": fitted.model_version,
        "chosen_model": fitted.model.name,
        "trained_through": fitted.trained_through,
        "calibrated_on": fitted.calibrated_on,
        "customers_scored": len(scores),
        "mean_churn_probability": round(float(probability.mean()), 6) if len(scores) else None,
        "risk_bands": {band_name: int(counts.get(band_name, 0)) for band_name in RISK_BANDS},
        "first_reason_groups": {str(k): int(v) for k, v in top_reasons.head(5).items()},
        "drift_psi": drift_report(fitted.reference, current),
    }
    return {SCORES: scores}, metrics


def _name_reasons(matrix: "np.ndarray", effects: "np.ndarray", typical: "np.ndarray", columns: Sequence[str],
                  minimum: float, offset: int, reasons: dict, amounts: dict, first_groups: "np.ndarray") -> None:
    """Fill reason_k / contribution_k of the chunk's rows (from `offset` on): the groups with the
    largest positive contributions of at least `minimum`, each written by its phrase from the row's
    values; and the group of each first reason."""
    import numpy as np

    names = list(REASONS)
    typical_by_column = dict(zip(columns, typical))
    order = np.argsort(-effects, axis=1, kind="stable")[:, :REASONS_PER_CUSTOMER]
    for rank in range(REASONS_PER_CUSTOMER):
        group = order[:, rank]
        effect = effects[np.arange(len(effects)), group]
        for index in np.unique(group):
            rows = np.flatnonzero((group == index) & (effect >= minimum))
            if not len(rows):
                continue
            reason_columns, phrase = REASONS[names[index]]
            values = [matrix[rows, columns.index(column)] for column in reason_columns]
            texts = [phrase(dict(zip(reason_columns, row)), typical_by_column) for row in zip(*values)]
            reasons[f"reason_{rank + 1}"][offset + rows] = texts
            amounts[f"contribution_{rank + 1}"][offset + rows] = effect[rows]
            if rank == 0:
                first_groups[offset + rows] = names[index]
