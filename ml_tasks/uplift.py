"""Campaign uplift per customer: how much a campaign raises each customer's chance of converting,
with the chance with and without it, ranked for the next campaign.

A trained model (see ml_tasks.contract): `fit(training, as_of_date, settings)` learns from
features.campaign_training_set, one row per member of each ended campaign (treatment or the
randomly held-out control group, converted or not) with their features as known before the
campaign started; `score(fitted, inputs, ...)` scores every customer of features.customer_features
on the as-of date. Rows are sorted by (campaign, customer) before fitting and by customer_id before
scoring, and everything random is seeded: the same rows in another order give the same scores.

Method: a two-model (T-)learner. One logistic regression learns the conversion probability of
treated members, another that of control members; a customer's predicted uplift is the difference,
p(convert | treated) - p(convert | not treated). Features and their preparation are the churn
model's logistic regression (ml_tasks.churn: numerical customer features, favourite channel as 0/1
columns, signed log of counts and amounts, median imputation with missing indicators,
standardisation), so the two read customers alike. The campaign's channel is left out: the next
campaign's is not known when customers are ranked for it.

Why strongly regularised logistic regressions (`inverse_regularisation`, C = 0.001): conversions
are rare (2-12%) and the control group is a fifth of the members, so each fit sees few
conversions, and the uplift is a small difference of two noisy probabilities. Measured on the dev
warehouse (52 campaigns, 27,332 members; 13 held out), held-out Qini z (below) by C: 0.001 2.73,
0.003 2.50, 0.01 1.99, 0.03 1.36, 0.1 0.90, 1 0.73; a bounded gradient boosting T-learner 2.00;
a ridge regression of the transformed outcome (Athey and Imbens; for the 80/20 split) 1.32-1.87;
scaling each model's C to its rows (equal penalty per mean loss) 0.76-1.63. The penalty is on the
sum of losses, so it weakens as campaigns and customers accumulate: the data then speak louder.
C was chosen on those held-out campaigns, so their z of 2.73 flatters the model a little; the
no-uplift shuffles and the year-long history below were not used to choose.

Validation on held-out campaigns, never a random split of rows (a customer is in many campaigns,
and campaigns differ by season): the latest `holdout_share` of campaigns by start date are held out,
the earlier ones train. Figures on the held-out members:
- Qini coefficient: members sorted by predicted uplift, highest first; at each cut the incremental
  conversions g = conversions of the treated above the cut - conversions of the controls above it
  x (treated / controls above it); the area under g / members against the share targeted, minus
  the area under the straight line of random targeting (g of everyone times the share). Zero is
  random targeting; positive: the model finds the persuadable first. Ties are cut together.
- Random targeting's Qini is zero in expectation; its spread on these members (the standard
  deviation over `random_orderings` seeded random orders) is the noise: holdout_qini_z = the
  model's Qini / that spread. The floor is on z, so it means the same with any number of members.
- The baseline "target the highest churn risk first": the churn model's logistic regression
  (ml_tasks.churn) fitted on the training campaigns' members whose churn label is known
  (is_churned), ranking the held-out members by churn probability; its Qini and z.
- Observed uplift (treated minus control conversion rate) of all held-out members and of the fifth
  ranked highest by the model and by churn risk.

Published: the two models refitted on every campaign (the held-out ones too), as the validated
procedure moved forward: the latest campaigns are the ones most like the next.

Minimum history: InsufficientData when fewer than `min_campaigns` (8) campaigns, or when the
training or the held-out campaigns' treated or control members hold fewer than
`min_group_conversions` (20) conversions each: with 20 conversions among 250 controls the control
rate's standard error is 1.7 points, as large as the smallest uplift the simulator plants.

Who is scored: every customer of customer_features, buyers or not (a campaign goes to contacts);
marketing_opt_in is copied so the reader filters on consent. uplift_rank 1 = most moved (ties by
customer_id); uplift_band by rank: `high` the top `high_band_share` (20%), `medium` the next
`medium_band_share` (30%), `low` the rest: a campaign to a fifth of customers takes the high band.

Drift: the fit keeps a sample of predicted uplift on its training rows and of the DRIFT_FEATURES
columns most correlated with it; `score` returns their population stability against today's
opted-in customers (campaigns go to them: against every customer the uplift's PSI was 0.29 on the
dev warehouse, from non-buyers and opted-out customers who are never members, not from drift).

Measured (dev warehouses of the truth fixture, 4,000 simulated customers, seed 13; members reached
25% of opted-in customers every 14 days, a fifth held as control):
- As of 2026-01-31 (52 campaigns from 2024-01-31 with features, 27,332 members; 13 held out: 6,896
  members, 1,378 controls, 714 conversions): Qini 0.0047, random spread 0.0017, z 2.73; churn-risk
  baseline z -0.44. The same with treatment shuffled within each campaign (no uplift at all; five
  shuffles): z -0.69, 0.69, 2.16, 0.15, 0.05.
- As of 2025-01-31 (26 campaigns, 12,575 members; 6 held out: 3,084 members, 623 controls, 345
  conversions): z 0.45; churn-risk baseline z 0.06: six campaigns cannot tell this model from
  random targeting.
- Personas ranked by their customers' mean predicted uplift (as of 2026-01-31, every customer):
  bargain_hunters 0.080 > champions 0.064 > loyal_regulars 0.050 > occasional_big_spenders 0.046 >
  drifting_away 0.041 > one_time_buyers 0.036 against the planted 0.12 > 0.06 > 0.05 > 0.04 > 0.02
  > 0.01 (Spearman 0.943: champions and loyal regulars swapped, planted 0.01 apart). Refitted on 20
  resamplings of the campaigns (with replacement): 0.77-0.94, median 0.94, at least 0.8 in 19. The
  members' observed uplift per persona orders them bargain_hunters 0.130 > loyal_regulars 0.062 >
  champions 0.053 > occasional_big_spenders 0.049 > one_time_buyers 0.009 > drifting_away 0.002
  (standard errors 0.007-0.013; drifting customers churn before converting), also 0.943. The model
  puts champions above loyal regulars in all 20 resamplings: with this much shrinkage the treated
  model, fitted on four times the rows, moves more than the control model, so the uplift leans
  towards the treated conversion rate (champions 0.14, loyal regulars 0.12).
- Fit 4-5 s (52 campaigns, 27,332 members; most of it the 200 random orderings), score 0.1 s
  (8,497 customers), on two shared cores.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from ml_tasks import churn  # imports no pandas or scikit-learn at import
from ml_tasks.contract import (BadParameter, InsufficientData, check_range, checked_input, iso_day, rounded_for_json,
                               typed_results)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

MODEL_VERSION = "uplift-1"
TRAINING = "features.campaign_training_set"
FEATURES = "features.customer_features"
SCORES = "ml.campaign_uplift_scores"
CAMPAIGN = "campaign_id"
CAMPAIGN_START = "campaign_start_date"
TREATED = "is_treatment"
CONVERTED = "has_converted"
CHURNED = "is_churned"
SNAPSHOT = "as_of_date"
DRIFT_FEATURES = 5
TOP_SHARE = 0.2  # the held-out fifth ranked highest, whose observed uplift the metrics report

SCORE_COLUMNS: dict[str, str] = {
    "customer_id": "string",
    "predicted_uplift": "double",
    "conversion_if_treated": "double",
    "conversion_if_not_treated": "double",
    "uplift_rank": "integer",
    "uplift_band": "string",
    "marketing_opt_in": "boolean",
}
UPLIFT_BANDS = ("high", "medium", "low")


# What fit reads of the training set, so the runner reads only these.
TRAINING_COLUMNS: tuple[str, ...] = (
    CAMPAIGN, CAMPAIGN_START, "customer_id", SNAPSHOT, TREATED, CONVERTED, CHURNED, *churn.FEATURE_COLUMNS,
)

# What score reads of customer_features.
SCORING_COLUMNS: tuple[str, ...] = ("customer_id", *churn.FEATURE_COLUMNS)

# holdout_qini_z: the held-out Qini over the spread of random targeting's Qini on the same members.
# Measured: 2.73 on the dev warehouse with 13 held-out campaigns; 0.45 with 6 (a year of history);
# with no uplift at all (treatment shuffled) -0.69..2.16 over five shuffles, i.e. about a standard
# normal. At 1 a model is ahead of random targeting by one standard deviation of chance: a model
# with no skill passes about one time in six, one like the 13-campaign fit nearly always.
QUALITY_FLOORS: dict[str, float] = {"holdout_qini_z": 1.0}


@dataclass(frozen=True)
class UpliftSettings:
    training_max_rows: int = field(default=500_000, metadata={"doc": (
        "campaign_uplift: training rows read at most; past it the runner reads the rows of a"
        " customer-hash sample (every campaign of the same customers)")})
    holdout_share: float = field(default=0.25, metadata={"doc": (
        "campaign_uplift: share of campaigns, the latest by start date, held out to validate (at least one)")})
    min_campaigns: int = field(default=8, metadata={"doc": (
        "campaign_uplift: ended campaigns needed before a model is fitted; fewer: insufficient data")})
    min_group_conversions: int = field(default=20, metadata={"doc": (
        "campaign_uplift: conversions the treated and the control members of the training and of the"
        " held-out campaigns each need; fewer: insufficient data")})
    min_holdout_controls: int = field(default=1_000, metadata={"doc": (
        "campaign_uplift: control members the held-out campaigns need before the model is judged and"
        " published; fewer: insufficient data")})
    inverse_regularisation: float = field(default=0.001, metadata={"doc": (
        "campaign_uplift: C of both logistic regressions (smaller: stronger L2 penalty)")})
    random_orderings: int = field(default=200, metadata={"doc": (
        "campaign_uplift: random orders of the held-out members giving random targeting's Qini spread")})
    random_state: int = field(default=0, metadata={"doc": "campaign_uplift: seed of the random orders"})
    high_band_share: float = field(default=0.2, metadata={"doc": (
        "campaign_uplift: share of customers, ranked by predicted uplift, in the high band")})
    medium_band_share: float = field(default=0.3, metadata={"doc": (
        "campaign_uplift: share of customers after the high band in the medium band")})

    def __post_init__(self) -> None:
        check_range("training_max_rows", self.training_max_rows, minimum=1_000, maximum=50_000_000, kind=int)
        check_range("holdout_share", self.holdout_share, minimum=0.05, maximum=0.5, kind=float)
        check_range("min_campaigns", self.min_campaigns, minimum=2, maximum=10_000, kind=int)
        check_range("min_group_conversions", self.min_group_conversions, minimum=1, maximum=100_000, kind=int)
        check_range("min_holdout_controls", self.min_holdout_controls, minimum=1, maximum=10_000_000, kind=int)
        check_range("inverse_regularisation", self.inverse_regularisation, minimum=1e-6, maximum=1e4, kind=float)
        check_range("random_orderings", self.random_orderings, minimum=20, maximum=10_000, kind=int)
        check_range("random_state", self.random_state, minimum=0, maximum=2**32 - 1, kind=int)
        check_range("high_band_share", self.high_band_share, minimum=0.0, maximum=1.0, kind=float)
        check_range("medium_band_share", self.medium_band_share, minimum=0.0, maximum=1.0, kind=float)
        if self.high_band_share + self.medium_band_share > 1.0:
            raise BadParameter(
                f"medium_band_share: got {self.medium_band_share!r}, expected at most 1 - high_band_share"
                f" ({1.0 - self.high_band_share:g})"
            )


@dataclass
class UpliftModel:
    """What `score` needs: the treated and the control conversion models, drift references and the
    campaigns it learnt from."""

    treated: Any
    control: Any
    reference: dict[str, "np.ndarray"]
    trained_through: str  # start date of the latest campaign learnt from
    campaigns: int
    model_version: str = MODEL_VERSION

    def predict(self, matrix: "np.ndarray") -> tuple["np.ndarray", "np.ndarray"]:
        """(conversion if treated, conversion if not treated) of each row of a feature matrix."""
        return self.treated.predict_proba(matrix)[:, 1], self.control.predict_proba(matrix)[:, 1]


# ---- fit ------------------------------------------------------------------------------------------

def fit(training: Mapping[str, "pd.DataFrame"], as_of_date: dt.date, settings: UpliftSettings) -> tuple[UpliftModel, dict]:
    """Validate a T-learner on the latest campaigns held out, compare it with random targeting and
    with targeting the highest churn risk, then refit it on every campaign for publishing."""
    from ml_tasks.monitoring import reference_sample

    rows = _member_rows(training, as_of_date)
    starts = rows.groupby(CAMPAIGN, sort=True)[CAMPAIGN_START].first().sort_values(kind="stable")
    if len(starts) < settings.min_campaigns:
        raise InsufficientData(
            f"{TRAINING}: {len(starts)} ended campaigns with members, campaign uplift needs {settings.min_campaigns}"
        )
    held_out_campaigns = starts.index[-max(1, round(settings.holdout_share * len(starts))):]
    held_out = rows[CAMPAIGN].isin(held_out_campaigns).to_numpy()
    treated = rows[TREATED].to_numpy(dtype=bool)
    converted = rows[CONVERTED].to_numpy(dtype=bool)
    for name, part in (("training", ~held_out), ("held-out", held_out)):
        _check_conversions(name, treated[part], converted[part], settings)
    # Fewer held-out controls and the Qini cannot tell a useful model from random targeting (623
    # controls, a year of 4,000 customers: z 0.45, as a model without skill scores): nothing is
    # published rather than a ranking no one could check.
    holdout_controls = int((held_out & ~treated).sum())
    if holdout_controls < settings.min_holdout_controls:
        raise InsufficientData(
            f"{TRAINING}: the {len(held_out_campaigns)} held-out campaigns hold {holdout_controls} control"
            f" members; judging campaign uplift needs {settings.min_holdout_controls}"
        )

    matrix = churn.feature_matrix(rows)
    validated = _fit_t_learner(matrix[~held_out], treated[~held_out], converted[~held_out], settings)
    if_treated, if_not = validated.predict(matrix[held_out])
    model_uplift = if_treated - if_not
    test_treated, test_converted = treated[held_out], converted[held_out]
    model_qini = qini_coefficient(model_uplift, test_treated, test_converted)
    random_spread = random_qini_spread(test_treated, test_converted, settings.random_orderings, settings.random_state)
    churn_risk = _churn_risk(rows, matrix, held_out)

    metrics: dict[str, Any] = {
        "rows_read": len(training[TRAINING]),
        "campaigns": len(starts),
        "training_campaigns": len(starts) - len(held_out_campaigns),
        "training_members": int((~held_out).sum()),
        "training_controls": int((~treated[~held_out]).sum()),
        "training_conversions": int(converted[~held_out].sum()),
        "holdout_campaigns": len(held_out_campaigns),
        "holdout_window": f"{iso_day(starts.iloc[-len(held_out_campaigns)])}..{iso_day(starts.iloc[-1])}",
        "holdout_members": int(held_out.sum()),
        "holdout_controls": int((~test_treated).sum()),
        "holdout_conversions": int(test_converted.sum()),
        "holdout_qini": model_qini,
        "holdout_qini_random_spread": random_spread,
        "holdout_qini_z": model_qini / random_spread if random_spread > 0 else None,
        "holdout_observed_uplift": observed_uplift(test_treated, test_converted),
        "holdout_top_fifth_observed_uplift": _top_observed_uplift(model_uplift, test_treated, test_converted),
        "holdout_mean_predicted_uplift": float(model_uplift.mean()),
        "churn_baseline_qini": None,
        "churn_baseline_qini_z": None,
        "churn_baseline_top_fifth_observed_uplift": None,
    }
    if churn_risk is not None:
        churn_qini = qini_coefficient(churn_risk, test_treated, test_converted)
        metrics.update({
            "churn_baseline_qini": churn_qini,
            "churn_baseline_qini_z": churn_qini / random_spread if random_spread > 0 else None,
            "churn_baseline_top_fifth_observed_uplift": _top_observed_uplift(churn_risk, test_treated, test_converted),
        })

    published = _fit_t_learner(matrix, treated, converted, settings)
    if_treated, if_not = published.predict(matrix)
    uplift = if_treated - if_not
    drift_columns = _most_correlated_columns(matrix, uplift, churn.MATRIX_COLUMNS)
    published.reference = {"predicted_uplift": reference_sample(uplift)}
    for column in drift_columns:
        published.reference[column] = reference_sample(matrix[:, churn.MATRIX_COLUMNS.index(column)])
    published.trained_through = iso_day(starts.iloc[-1])
    published.campaigns = len(starts)
    metrics.update({"published_fit_members": len(rows), "drift_features": list(drift_columns)})
    return published, rounded_for_json(metrics)


def _member_rows(training: Mapping[str, "pd.DataFrame"], as_of_date: dt.date) -> "pd.DataFrame":
    """Members of campaigns that started before the as-of date (a rerun for an earlier date must not
    learn from later campaigns), sorted so that row order never matters."""
    import pandas as pd

    if TRAINING not in training:
        raise ValueError(f"training: no {TRAINING!r}; campaign uplift trains on it")
    frame = training[TRAINING]
    missing = sorted(set(TRAINING_COLUMNS) - set(frame.columns))
    if missing:
        raise ValueError(f"{TRAINING}: missing columns {', '.join(missing)}; campaign uplift reads {', '.join(TRAINING_COLUMNS)}")
    rows = frame[list(TRAINING_COLUMNS)].copy()
    rows[CAMPAIGN_START] = pd.to_datetime(rows[CAMPAIGN_START]).dt.normalize()
    rows[SNAPSHOT] = pd.to_datetime(rows[SNAPSHOT]).dt.normalize()
    rows = rows[rows[CAMPAIGN_START] <= pd.Timestamp(as_of_date)]
    for column in (TREATED, CONVERTED):
        if rows[column].isna().any():
            raise ValueError(f"{TRAINING}: {column} is null on {int(rows[column].isna().sum())} rows; expected true or false")
    rows[CAMPAIGN] = rows[CAMPAIGN].astype("str")
    rows["customer_id"] = rows["customer_id"].astype("str")
    return rows.sort_values([CAMPAIGN, "customer_id"], kind="stable").reset_index(drop=True)


def _check_conversions(part: str, treated: "np.ndarray", converted: "np.ndarray", settings: UpliftSettings) -> None:
    for group, members in (("treated", treated), ("control", ~treated)):
        conversions = int(converted[members].sum())
        if conversions < settings.min_group_conversions:
            raise InsufficientData(
                f"{TRAINING}: the {part} campaigns' {group} members hold {conversions} conversions"
                f" (of {int(members.sum())} members); campaign uplift needs {settings.min_group_conversions}"
            )


def _fit_t_learner(matrix: "np.ndarray", treated: "np.ndarray", converted: "np.ndarray",
                   settings: UpliftSettings) -> UpliftModel:
    """A conversion model on the treated rows and one on the control rows: the churn model's
    logistic regression pipeline with this model's penalty."""
    from sklearn.base import clone

    template = churn.candidate_models(churn.ChurnSettings(), churn.log_scaled_columns(churn.MATRIX_COLUMNS))[churn.BASELINE]
    template.set_params(logisticregression__C=settings.inverse_regularisation)
    models = [clone(template).fit(matrix[group], converted[group].astype(int)) for group in (treated, ~treated)]
    return UpliftModel(treated=models[0], control=models[1], reference={}, trained_through="", campaigns=0)


def _churn_risk(rows: "pd.DataFrame", matrix: "np.ndarray", held_out: "np.ndarray") -> "np.ndarray | None":
    """The held-out members' churn probability from the churn model's logistic regression fitted on
    the training campaigns' members with a known churn label (one row per customer and snapshot);
    None when those labels hold a single class."""
    import numpy as np


    labelled = (~held_out) & rows[CHURNED].notna().to_numpy()
    first = ~rows.duplicated(["customer_id", SNAPSHOT]).to_numpy()
    learn = np.flatnonzero(labelled & first)
    label = rows[CHURNED].to_numpy()[learn].astype(bool)
    if label.all() or not label.any():
        return None
    model = churn.candidate_models(churn.ChurnSettings(), churn.log_scaled_columns(churn.MATRIX_COLUMNS))[churn.BASELINE]
    model.fit(matrix[learn], label.astype(int))
    return model.predict_proba(matrix[held_out])[:, 1]


def _most_correlated_columns(matrix: "np.ndarray", uplift: "np.ndarray", columns: tuple[str, ...]) -> tuple[str, ...]:
    """The DRIFT_FEATURES columns whose values (nulls left out) correlate most with the uplift."""
    import numpy as np

    strength = {}
    for position, column in enumerate(columns):
        values = matrix[:, position]
        known = np.isfinite(values)
        if known.sum() > 2 and np.std(values[known]) > 0 and np.std(uplift[known]) > 0:
            strength[column] = abs(float(np.corrcoef(values[known], uplift[known])[0, 1]))
    return tuple(column for column, _ in sorted(strength.items(), key=lambda item: (-item[1], item[0]))[:DRIFT_FEATURES])


# ---- measures of targeting -----------------------------------------------------------------------

def qini_coefficient(score: "np.ndarray", treated: "np.ndarray", converted: "np.ndarray") -> float:
    """Area between the Qini curve of targeting by `score` (highest first; tied rows cut together)
    and random targeting's straight line, in incremental conversions per member (see the module
    docstring): 0 for random targeting, positive when the highest scores are the most persuadable."""
    import numpy as np

    score = np.asarray(score, dtype=float)
    treated = np.asarray(treated, dtype=bool)
    converted = np.asarray(converted, dtype=bool)
    order = np.argsort(-score, kind="stable")
    score, treated, converted = score[order], treated[order], converted[order]
    # Cut points: the last row of each run of equal scores.
    ends = np.flatnonzero(np.append(score[1:] != score[:-1], True))
    treated_count = np.cumsum(treated)[ends]
    control_count = np.cumsum(~treated)[ends]
    treated_conversions = np.cumsum(treated & converted)[ends]
    control_conversions = np.cumsum(~treated & converted)[ends]
    ratio = np.divide(treated_count, control_count, out=np.zeros(len(ends)), where=control_count > 0)
    gain = np.concatenate([[0.0], (treated_conversions - control_conversions * ratio) / len(score)])
    share = np.concatenate([[0.0], (ends + 1) / len(score)])
    area = float(np.sum((gain[1:] + gain[:-1]) / 2 * np.diff(share)))
    return area - gain[-1] / 2


def random_qini_spread(treated: "np.ndarray", converted: "np.ndarray", orderings: int, seed: int) -> float:
    """The standard deviation of the Qini coefficient of random targeting over `orderings` random
    orders of the members (seeded): the noise a model's Qini on them must stand out from."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return float(np.std([qini_coefficient(rng.random(len(treated)), treated, converted) for _ in range(orderings)]))


def observed_uplift(treated: "np.ndarray", converted: "np.ndarray") -> float | None:
    """Conversion rate of the treated minus that of the controls; None without either."""
    import numpy as np

    treated = np.asarray(treated, dtype=bool)
    converted = np.asarray(converted, dtype=bool)
    if treated.all() or not treated.any():
        return None
    return float(converted[treated].mean() - converted[~treated].mean())


def _top_observed_uplift(score: "np.ndarray", treated: "np.ndarray", converted: "np.ndarray") -> float | None:
    import numpy as np

    top = np.argsort(-score, kind="stable")[: max(1, math.ceil(TOP_SHARE * len(score)))]
    return observed_uplift(treated[top], converted[top])


# ---- score ----------------------------------------------------------------------------------------

def score(fitted: UpliftModel, inputs: Mapping[str, "pd.DataFrame"], as_of_date: dt.date,
          settings: UpliftSettings) -> tuple[dict[str, "pd.DataFrame"], dict]:
    """Predicted uplift, conversion with and without the campaign, rank and band for every customer
    of the as-of date (see the module docstring)."""
    import numpy as np
    import pandas as pd

    from ml_tasks.monitoring import drift_report

    features = checked_input(inputs, FEATURES, SCORING_COLUMNS, (FEATURES,))
    customers = features.sort_values("customer_id", kind="stable").reset_index(drop=True)
    matrix = churn.feature_matrix(customers)
    if_treated, if_not = fitted.predict(matrix) if len(customers) else (np.empty(0), np.empty(0))
    if_treated, if_not = np.round(if_treated, 6), np.round(if_not, 6)
    uplift = np.round(if_treated - if_not, 6)
    # Rank 1 = most moved; equal uplifts in customer_id order (the rows are sorted by it).
    order = np.argsort(-uplift, kind="stable")
    rank = np.empty(len(customers), dtype=np.int64)
    rank[order] = np.arange(1, len(customers) + 1)
    scores = pd.DataFrame({
        "customer_id": customers["customer_id"].astype("str"),
        "predicted_uplift": uplift,
        "conversion_if_treated": if_treated,
        "conversion_if_not_treated": if_not,
        "uplift_rank": rank,
        "uplift_band": uplift_bands(rank, settings),
        "marketing_opt_in": customers["marketing_opt_in"].astype("boolean"),
    })
    scores = typed_results(scores, SCORE_COLUMNS)
    # Drift among the opted-in customers: campaigns go to them, so the members trained on are them.
    opted_in = scores["marketing_opt_in"].fillna(False).to_numpy(dtype=bool)
    current = {"predicted_uplift": uplift[opted_in]}
    for column in fitted.reference:
        if column in churn.MATRIX_COLUMNS:
            current[column] = matrix[opted_in, churn.MATRIX_COLUMNS.index(column)]
    counts = scores["uplift_band"].value_counts()
    metrics = {
        "model_version": fitted.model_version,
        "trained_through": fitted.trained_through,
        "campaigns_learnt_from": fitted.campaigns,
        "customers_scored": len(scores),
        "customers_opted_in": int(scores["marketing_opt_in"].fillna(False).sum()),
        "mean_predicted_uplift": float(uplift.mean()) if len(scores) else None,
        "uplift_bands": {band: int(counts.get(band, 0)) for band in UPLIFT_BANDS},
        "drift_psi": drift_report(fitted.reference, current),
    }
    return {SCORES: scores}, rounded_for_json(metrics)


def uplift_bands(rank: "np.ndarray", settings: UpliftSettings) -> "np.ndarray":
    """'high' for the top high_band_share of ranks, 'medium' for the next medium_band_share, else 'low'."""
    import numpy as np

    share = (np.asarray(rank) - 1) / max(1, len(rank))
    return np.where(share < settings.high_band_share, "high",
                    np.where(share < settings.high_band_share + settings.medium_band_share, "medium", "low")).astype(object)

