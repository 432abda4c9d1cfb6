"""The models the DAG runs: one spec per model family. The DAG makes one task per spec, `publish`
makes a `_latest` view and a BI grant for every table a spec writes, and ml.model_runs records each
run against the spec's name and version. A new model is one module and one spec here.

Imports no pandas or scikit-learn: the DAG file parses this.
"""

from __future__ import annotations

from ml_tasks import (  # none imports pandas or scikit-learn at import
    activation, association, churn, clustering, comment_topics, forecast, influence, lifetime_value, satisfaction, uplift,
)
from ml_tasks.contract import InputTable, ModelSpec, OutcomeCheck, OutputTable

# ---- trained models' refitting rule ------------------------------------------------------------

# A monthly snapshot whose labels came in changes the training data: refit then, or when any
# snapshot's row count or label aggregate moved by more than TRAINING_CHANGE_TOLERANCE since the
# fit (at scale a late order or return can change some label on any day: refitting on each would
# move scores for no reason). A fit lives at most RETRAIN_MAX_AGE_DAYS even so.
RETRAIN_MAX_AGE_DAYS = 35
TRAINING_CHANGE_TOLERANCE = 0.01
# The labels of features.training_set (a view), stored: churn's and customer value's refit checks
# aggregate them instead of joining every snapshot each day.
TRAINING_LABELS = "features.training_labels"

# ---- customer segments and clusters (ml_tasks/clustering.py) ------------------------------------

# The segments are fitted on the as-of date's customers, the ones they score: a day adds about 1/700
# of a two-year shop's customers, so the fit is reused for a week unless the customers or their
# category rows moved by more than TRAINING_CHANGE_TOLERANCE. The daily refit took 15 of the task's
# 16.5 s at 100,000 customers to find nearly the same centroids; each day's customers still go to
# their nearest centroid, with their drift from the fit's measured.
SEGMENT_INPUTS = (InputTable(clustering.FEATURES), InputTable(clustering.CATEGORY_MIX))
SEGMENTS_RETRAIN_MAX_AGE_DAYS = 7

SEGMENTS_SPEC = ModelSpec(
    name="customer_segments",
    version=clustering.MODEL_VERSION,
    module="ml_tasks.clustering",
    settings=clustering.SegmentSettings,
    reads=SEGMENT_INPUTS,
    reads_previous=(clustering.SEGMENTS, clustering.PROFILES),
    writes=(
        OutputTable(
            clustering.SEGMENTS,
            clustering.SEGMENT_COLUMNS,
            "One row per customer with a revenue order: RFM scores (1-5 quintiles, 5 best) and segment,"
            " behavioural cluster (id stable across as-of dates, readable label), distance to the"
            " cluster's centroid (weighted standardised units) and the density-based outlier flag.",
            thinned_history=True,
        ),
        OutputTable(
            clustering.PROFILES,
            clustering.PROFILE_COLUMNS,
            "One row per cluster (kind 'cluster', segment = cluster id) and per RFM segment present"
            " (kind 'rfm'): size, share, outliers, feature means, top categories by spend, main channel;"
            " clusters also carry their centroid (JSON, transformed unscaled features) for id matching.",
        ),
        OutputTable(
            clustering.MIGRATION,
            clustering.MIGRATION_COLUMNS,
            "Customers per (kind 'rfm' | 'cluster', from, to) since previous_as_of_date, stayers"
            " included; 'new_customer' = not scored then, 'gone' = not scored now. Empty on a first run.",
        ),
    ),
    # As many customer rows as the default settings need buyers (10 x k_max): fewer cannot be clustered.
    minimum_input_rows=80,
    # On held-out customers, against the same k fitted to customers drawn from one Gaussian with
    # the training customers' mean and covariance (spreads and correlations kept, clusters gone):
    # the clusters must separate customers better than k-means separates a single blob. Absolute
    # values move with the data's age and size (60 days of 400 simulated customers: held-out
    # silhouette 0.09; 13 months of 4,000: 0.17); the gain over the reference measured 0.072 and
    # 0.071 on those, 0.027 on independent uniform noise (tests/test_clustering.py; at most 0.04 at
    # any k of 4-8). The inertia reduction's gain (0.076, 0.109 vs 0.059 on noise) is recorded but
    # separates too narrowly to be a floor. Judged on 500 held-out customers or more (2,500 scored):
    # on 56 held out (90 days of 400 customers) the gain was 0.039, on 119 (60 days of 1,000) 0.047.
    quality_floors={"judged_silhouette_gain": 0.05},
    trains_on=SEGMENT_INPUTS,
    training_signature=("count(*)", "count(distinct customer_id)"),
    retrain_max_age_days=SEGMENTS_RETRAIN_MAX_AGE_DAYS,
    training_change_tolerance=TRAINING_CHANGE_TOLERANCE,
    retraining="fitted on the as-of date's customers at least weekly, sooner when they or their category rows move by"
               " more than 1%; every customer placed daily in the nearest cluster, ids matched to the previous run's centroids",
    description="RFM segments by rule and k-means behavioural clusters with stable ids, labels and outliers.",
)

# ---- association rules and next-best offers (ml_tasks/association.py) ---------------------------

# basket_items holds the baskets as known on its latest build's as-of date, rewriting only those a
# day changed (no as_of_date column): read like a mart, by the window's order dates.
WINDOW_BASKETS = InputTable(
    association.BASKETS_TABLE,
    columns=association.BASKET_COLUMNS,
    window_column="order_date",
    window_setting="basket_window_days",
    dated=False,
    categorical=("sku", "category", "customer_id"),
)
# Rules are mined again once a week, or sooner when the window's item rows or baskets moved by more
# than TRAINING_CHANGE_TOLERANCE since (a sale, a new range). A day adds and drops about 1/365 of a
# year's window: mining it daily took 14 of the task's 20 s at 100,000 customers to publish nearly
# the same rules.
ASSOCIATION_RETRAIN_MAX_AGE_DAYS = 7

ASSOCIATION_SPEC = ModelSpec(
    name="association_rules",
    version=association.MODEL_VERSION,
    module="ml_tasks.association",
    settings=association.AssociationSettings,
    reads=(
        WINDOW_BASKETS,
        InputTable(association.CUSTOMERS_TABLE, columns=association.CUSTOMER_COLUMNS),
    ),
    writes=(
        OutputTable(
            "ml.association_rules",
            {
                "item_level": "string",
                "antecedent": "string",
                "consequent": "string",
                "antecedent_size": "integer",
                "support": "double",
                "confidence": "double",
                "lift": "double",
                "leverage": "double",
                "conviction": "double",
                "antecedent_baskets": "integer",
                "consequent_baskets": "integer",
                "rule_baskets": "integer",
                "baskets": "integer",
            },
            "Rules A => C of the window's baskets at product (sku) and category level, one-item"
            " consequents, redundant ones pruned; antecedent: items sorted, joined by ' + ';"
            " conviction null when infinite (C never missing after A).",
        ),
        OutputTable(
            "ml.product_recommendations",
            {
                "customer_id": "string",
                "rank": "integer",
                "sku": "string",
                "score": "double",
                "rule": "string",
                "source": "string",
                "marketing_opt_in": "boolean",
            },
            "Top-K skus per customer not bought in the window: from product rules firing on the"
            " customer's purchases (source 'rule', score = confidence, rule = 'A => C'), then best"
            " sellers weighted by the customer's affinity for their category (score = basket share x"
            " affinity; source 'category_best_seller' in the favourite category, else 'best_seller').",
            thinned_history=True,
        ),
    ),
    # Twenty baskets (the default support floor) at both levels: fewer cannot hold a frequent
    # itemset; min_baskets (a setting, default 200) decides beyond that.
    minimum_input_rows=40,
    # Held out: the last 20% of the window's days. Offers must hit at least 90% as many customers
    # as the K best sellers do (10% slack for sampling noise: a policy no better than a best-seller
    # list is not worth a model, one clearly worse must not replace the previous offers); the top
    # rules must keep a median lift >= 1 on baskets they were not mined from (below 1 they were noise).
    quality_floors={"offer_hit_rate_ratio": 0.9, "top_rules_median_holdout_lift": 1.0},
    trains_on=(WINDOW_BASKETS,),
    training_signature=("count(*)", "count(distinct basket_id)"),
    retrain_max_age_days=ASSOCIATION_RETRAIN_MAX_AGE_DAYS,
    training_change_tolerance=TRAINING_CHANGE_TOLERANCE,
    # On a Spark warehouse the itemsets are mined by MLlib's FPGrowth (ml_tasks/association_spark.py).
    fits_on_spark=True,
    retraining="rules mined from the window's baskets at least weekly, sooner when its rows or baskets move"
               " by more than 1%; offers made daily from each customer's purchases in the window",
    description="Frequent itemsets (exact, sparse Eclat), association rules and next-best offers.",
)

# ---- churn propensity (ml_tasks/churn.py) -------------------------------------------------------


CHURN_SPEC = ModelSpec(
    name="churn_propensity",
    version=churn.MODEL_VERSION,
    module="ml_tasks.churn",
    settings=churn.ChurnSettings,
    reads=(InputTable(churn.FEATURES),),
    writes=(
        OutputTable(
            churn.SCORES,
            churn.SCORE_COLUMNS,
            "One row per customer with an order: calibrated probability of placing no order in the next"
            " 90 days, risk band, and the three features raising it most, in words, each with the"
            " probability it adds (the drop when that feature is set to its typical value).",
            thinned_history=True,
        ),
    ),
    minimum_input_rows=1,
    quality_floors=churn.QUALITY_FLOORS,
    trains_on=(InputTable(churn.TRAINING, columns=churn.TRAINING_COLUMNS, sample_setting="training_max_rows",
                          signature_from=TRAINING_LABELS),),
    training_signature=("count(*)", "sum(case when is_churned then 1 else 0 end)"),
    retrain_max_age_days=RETRAIN_MAX_AGE_DAYS,
    training_change_tolerance=TRAINING_CHANGE_TOLERANCE,
    outcomes=(OutcomeCheck(churn.SCORES, "churn_probability", "churn", 90),),
    retraining="refit when a new monthly snapshot's labels come in or the labels move by more than 1%, and at least every 35 days; scores daily",
    description="Churn propensity: candidates chosen and calibrated out of time, probabilities with reasons.",
)

# ---- customer value (ml_tasks/lifetime_value.py) -------------------------------------------------

VALUE_SPEC = ModelSpec(
    name="customer_value",
    version=lifetime_value.MODEL_VERSION,
    module="ml_tasks.lifetime_value",
    settings=lifetime_value.ValueSettings,
    reads=(InputTable(lifetime_value.SUMMARY), InputTable(lifetime_value.FEATURES)),
    writes=(
        OutputTable(
            lifetime_value.VALUE,
            lifetime_value.VALUE_COLUMNS,
            "One row per customer with a revenue order: BG/NBD probability of being alive and expected"
            " purchases, Gamma-Gamma expected order value, predicted spend over the next 90 and 365 days"
            " from the method that validated best (method), value tier and rank by the 365-day spend.",
            thinned_history=True,
        ),
    ),
    minimum_input_rows=1,
    quality_floors=lifetime_value.QUALITY_FLOORS,
    trains_on=(
        InputTable(lifetime_value.TRAINING, columns=lifetime_value.TRAINING_COLUMNS, sample_setting="training_max_rows",
                   signature_from=TRAINING_LABELS),
    ),
    training_signature=(
        "count(*)",
        "count(spend_next_90_days)",
        "count(spend_next_365_days)",
        "round(sum(coalesce(spend_next_365_days, spend_next_90_days, 0)), 2)",
    ),
    retrain_max_age_days=RETRAIN_MAX_AGE_DAYS,
    training_change_tolerance=TRAINING_CHANGE_TOLERANCE,
    outcomes=(
        OutcomeCheck(lifetime_value.VALUE, "predicted_spend_90d", "spend", 90),
        OutcomeCheck(lifetime_value.VALUE, "predicted_spend_365d", "spend", 365),
    ),
    retraining="refit when a snapshot's spend labels come in or move by more than 1%, and at least every 35 days; scores daily",
    description="Customer value: BG/NBD + Gamma-Gamma vs gradient boosting vs last period's spend, best by validation; tiers.",
)

# ---- referral influence (ml_tasks/influence.py) --------------------------------------------------

INFLUENCE_SPEC = ModelSpec(
    name="referral_influence",
    version=influence.MODEL_VERSION,
    module="ml_tasks.influence",
    settings=influence.InfluenceSettings,
    reads=(InputTable(influence.REFERRALS), InputTable(influence.FEATURES, columns=("customer_id", "monetary"))),
    writes=(
        OutputTable(
            influence.INFLUENCE,
            influence.INFLUENCE_COLUMNS,
            "One row per customer in the CRM referral network (referred anyone or was referred):"
            " direct referrals, size, depth and net revenue of their referral tree, PageRank (rank"
            " flowing to the referrer), influence score and rank (1 = most influential), top-influencer flag.",
            thinned_history=True,
        ),
    ),
    # Every figure is a count: one referral is a network (a new install has none: insufficient data).
    minimum_input_rows=influence.MINIMUM_EDGES,
    quality_floors=influence.QUALITY_FLOORS,
    retraining="counted afresh on every run from the network known on the as-of date (nothing is fitted)",
    description="Referral network: direct and indirect referrals, tree revenue, PageRank and top influencers.",
)

# ---- campaign uplift (ml_tasks/uplift.py) --------------------------------------------------------

UPLIFT_SPEC = ModelSpec(
    name="campaign_uplift",
    version=uplift.MODEL_VERSION,
    module="ml_tasks.uplift",
    settings=uplift.UpliftSettings,
    reads=(InputTable(uplift.FEATURES, columns=uplift.SCORING_COLUMNS),),
    writes=(
        OutputTable(
            uplift.SCORES,
            uplift.SCORE_COLUMNS,
            "One row per customer of the as-of date: predicted rise in conversion probability if sent the next"
            " campaign (T-learner), conversion probability with and without it, rank (1 = most moved), band"
            " (top 20% high, next 30% medium) and marketing consent.",
            thinned_history=True,
        ),
    ),
    minimum_input_rows=1,
    # On the latest quarter of campaigns held out: the model's Qini at least one standard deviation of
    # random targeting's above zero (z 2.73 on two years of 4,000 simulated customers; a model with no
    # skill passes about one time in six). Too few held-out controls to tell: insufficient data.
    quality_floors=uplift.QUALITY_FLOORS,
    trains_on=(InputTable(uplift.TRAINING, columns=uplift.TRAINING_COLUMNS, sample_setting="training_max_rows"),),
    training_signature=(
        "count(*)",
        "sum(case when has_converted then 1 else 0 end)",
        "sum(case when is_treatment then 1 else 0 end)",
    ),
    retrain_max_age_days=RETRAIN_MAX_AGE_DAYS,
    training_change_tolerance=TRAINING_CHANGE_TOLERANCE,
    retraining="refit when a campaign ends (its members arrive) or the conversions move by more than 1%, and at least every 35 days; scores daily",
    description="Campaign uplift per customer: T-learner validated on the latest campaigns, against random and churn-risk targeting.",
)

# ---- service-satisfaction drivers (ml_tasks/satisfaction.py) ------------------------------------

SATISFACTION_SPEC = ModelSpec(
    name="satisfaction_drivers",
    version=satisfaction.MODEL_VERSION,
    module="ml_tasks.satisfaction",
    settings=satisfaction.SatisfactionSettings,
    # The longer history window: a rated ticket's prior tickets look back before the rating window.
    reads=(
        InputTable(satisfaction.TICKETS, columns=satisfaction.TICKET_COLUMNS, window_column="created_date",
                   window_setting="history_window_days", dated=False),
    ),
    writes=(
        OutputTable(
            satisfaction.DRIVERS,
            satisfaction.DRIVER_COLUMNS,
            "One row per driver level of the satisfaction rating (first-reply and resolution SLA breach,"
            " reopened: true vs false; category, channel, priority: vs the most common level; prior tickets"
            " 1, 2+ vs none): effect in stars from a linear model of the window's rated tickets with"
            " robust confidence interval and p-value, tickets and share at the level, their mean rating,"
            " rank by |effect| and one sentence.",
        ),
    ),
    # Tickets read; the model's own rule counts the rated ones (InsufficientData below its minimum).
    minimum_input_rows=1,
    # Held out: the latest 20% of rated tickets; the drivers must predict them better than the
    # training mean rating (MAE skill 0.325 on the simulator).
    quality_floors=satisfaction.QUALITY_FLOORS,
    retraining="fitted afresh on every run from the window's rated tickets",
    description="Service-satisfaction drivers: effect in stars of SLA breaches, reopening, category, channel, priority, prior tickets.",
)

# ---- comment topics (ml_tasks/comment_topics.py) -------------------------------------------------

COMMENT_TOPICS_SPEC = ModelSpec(
    name="comment_topics",
    version=comment_topics.MODEL_VERSION,
    module="ml_tasks.comment_topics",
    settings=comment_topics.CommentTopicSettings,
    reads=(
        InputTable(comment_topics.TICKETS, columns=comment_topics.TICKET_COLUMNS, window_column="created_date",
                   window_setting="window_days", dated=False),
    ),
    writes=(
        OutputTable(
            comment_topics.TOPICS,
            comment_topics.TOPIC_COLUMNS,
            "Topics of the satisfaction comments on tickets created in the window (TF-IDF + NMF): label"
            " (top three terms), top ten terms, comments, share, rated comments and their mean rating.",
        ),
        OutputTable(
            comment_topics.TRENDS,
            comment_topics.TREND_COLUMNS,
            "Each topic's comments and share of the month's comments, per month of ticket creation.",
        ),
    ),
    # Tickets in the window; the model's own rule counts the comments among them (InsufficientData
    # below its minimum).
    minimum_input_rows=1,
    # On the comments of the last holdout_days, against the same NMF on a matrix whose words were
    # shuffled across comments (topics of noise): explained share +0.072 and concentration +0.270 on
    # the simulator; noise scores about 0 on both.
    quality_floors=comment_topics.QUALITY_FLOORS,
    retraining="fitted afresh on every run from the window's comments",
    description="Topics of customers' satisfaction comments (TF-IDF + NMF): top terms, shares, monthly trend.",
)

# ---- sales forecast (ml_tasks/forecast.py) -------------------------------------------------------

FORECAST_SPEC = ModelSpec(
    name="sales_forecast",
    version=forecast.MODEL_VERSION,
    module="ml_tasks.forecast",
    settings=forecast.ForecastSettings,
    reads=(
        InputTable(forecast.SALES, columns=("sales_date", "category", "revenue"), window_column="sales_date",
                   window_setting="window_days", dated=False),
    ),
    writes=(
        OutputTable(
            forecast.FORECAST,
            forecast.FORECAST_COLUMNS,
            "One row per category and day ahead (1..horizon_days; category 'all' = the total, forecast as a"
            " series of its own): predicted net revenue and its 80% prediction interval, calibrated on the"
            " rolling-origin backtest's errors.",
        ),
        OutputTable(
            forecast.BACKTEST,
            forecast.BACKTEST_COLUMNS,
            "Rolling-origin backtest of the forecast (method weekday_profile_damped_trend) and of seasonal"
            " naive (same weekday last week) per category, 'all' and 'categories_pooled': sMAPE, MAE,"
            " realised coverage of the 80% interval, origins: how far to trust each category's forecast.",
        ),
    ),
    # The model's own rule decides: InsufficientData below eight weeks (and a training span plus a
    # horizon) of calendar days.
    minimum_input_rows=1,
    # Judged once 8 backtest origins have a calibrated interval: at least 5% lower sMAPE than seasonal
    # naive (measured 0.23-0.26 on the simulator) and a realised 80%-interval coverage of 70% or more
    # (measured 0.80-0.82).
    quality_floors=forecast.QUALITY_FLOORS,
    retraining="computed afresh on every run from the window's daily sales (nothing stored)",
    description="Daily net revenue per category and in total for the next 28 days with an 80% interval; checked against seasonal naive.",
)

# ---- the activation list (ml_tasks/activation.py) -----------------------------------------------

ACTIVATION_SPEC = ModelSpec(
    name="activation_list",
    version=activation.MODEL_VERSION,
    module="ml_tasks.activation",
    settings=activation.ActivationSettings,
    reads=(
        InputTable(activation.CONTACTS, columns=activation.CONTACT_COLUMNS),
        *(InputTable(table, columns=columns, may_lack_date=True) for table, columns in (
            (activation.CHURN, activation.CHURN_COLUMNS),
            (activation.VALUE, activation.VALUE_COLUMNS),
            (activation.UPLIFT, activation.UPLIFT_COLUMNS),
        )),
        # Each customer's best offer only: at a million customers the ten offers each were 8M rows.
        InputTable(activation.OFFERS, columns=activation.OFFER_COLUMNS, may_lack_date=True, row_filter="rank = 1"),
    ),
    writes=(
        OutputTable(
            activation.CONTACT_LIST,
            activation.CONTACT_LIST_COLUMNS,
            "Whom the CRM contacts next, one row per customer (opted in to marketing on the date, no open"
            " ticket by default): action (retain: high churn risk and top value; campaign: top predicted"
            " uplift; cross_sell: a product rule offer), channel (phone or email), a one-line reason, contact"
            " details, the scores behind it and the best next offer. Also a dated CSV in CRMW_EXPORT_DIR/activation.",
            thinned_history=True,
        ),
    ),
    minimum_input_rows=1,
    after=("churn_propensity", "customer_value", "campaign_uplift", "association_rules"),
    exports=(activation.CONTACT_LIST,),
    retraining="built afresh on every run from the same day's model outputs and contacts (nothing is fitted)",
    description="Activation list for the CRM tool: whom to contact, how and why; consent and open tickets respected.",
)

MODELS: tuple[ModelSpec, ...] = (
    SEGMENTS_SPEC, ASSOCIATION_SPEC, CHURN_SPEC, VALUE_SPEC, INFLUENCE_SPEC, UPLIFT_SPEC, SATISFACTION_SPEC,
    COMMENT_TOPICS_SPEC, FORECAST_SPEC, ACTIVATION_SPEC,
)

# Views `publish` refreshes after the `_latest` ones, for BI.
VIEWS: dict[str, str] = {
    # The day's value tiers beside the same day's segments: "high-value customers at risk of lapsing".
    "ml.customer_value_segments_latest": (
        "select customer_value.*, segments.rfm_segment, segments.cluster_id, segments.cluster_label"
        " from ml.customer_value_latest as customer_value"
        " left join ml.customer_segments as segments"
        " on segments.customer_id = customer_value.customer_id and segments.as_of_date = customer_value.as_of_date"
    ),
}


def model(name: str) -> ModelSpec:
    for spec in MODELS:
        if spec.name == name:
            return spec
    raise KeyError(f"model {name!r}: not in the registry; expected one of {', '.join(s.name for s in MODELS)}")


def _check_order(models: tuple[ModelSpec, ...]) -> None:
    """A model runs after the ones whose outputs it reads: they must be registered before it."""
    seen: set[str] = set()
    for spec in models:
        for upstream in spec.after:
            if upstream not in seen:
                raise ValueError(f"registry: {spec.name} runs after {upstream!r}, which is not registered before it")
        seen.add(spec.name)


_check_order(MODELS)


def output_tables() -> list[OutputTable]:
    """Every table any model writes; two models never write the same one."""
    tables = [table for spec in MODELS for table in spec.writes]
    names = [table.name for table in tables]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"registry: {duplicated[0]} is written by more than one model")
    return tables
