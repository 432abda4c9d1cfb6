"""Customer segments and behavioural clusters: RFM segments by rule, k-means clusters with stable ids
and readable labels, density-based outliers, and how customers moved since the previous as-of date.

A pure module with a trained model's `fit(training, as_of_date, settings)` and
`score(fitted, inputs, as_of_date, settings)` (see ml_tasks.contract): no warehouse, no Airflow;
seeded, so the same inputs give the same outputs whatever their row order. The fit (feature
filling, scaling, outlier rule, centroids, held-out quality) is made on the as-of date's customers
and reused by the task for later days while they hold (ml_tasks.registry says when it is made
again); scoring places each day's customers in the fit's space and nearest cluster, and measures
their drift from the fit's customers.

Who is scored: customers with at least one revenue order on the as-of date (`frequency >= 1`).
Customers known without one (a CRM contact who never bought, a buyer whose only orders were
returned) have no recency, basket or channel to cluster on: they are in no output table.

RFM segments. Recency, frequency and monetary value are scored 1-5 by quintile of rank (5 = best:
most recent, most orders, most spent; ties broken by customer_id, so scores do not depend on row
order). With fm = (f_score + m_score) / 2, the first rule of SEGMENT_RULES that holds names the
segment; every (r, f, m) lands in exactly one.

Behavioural clusters. Each customer is a vector of the CLUSTER_FEATURES below, transformed
(log1p for skewed counts and amounts, recency capped at `recency_cap_days`) and standardised
(z-scores over the scored customers), then weighted so each feature *group* weighs in by its
GROUP_WEIGHTS entry however many columns it has (a group of n columns is scaled by
weight / sqrt(n)): eight category shares do not outvote recency. k-means (n_init starts: a single
start lands in a worse optimum now and then) is fitted on a seeded training share of the customers
(1 - holdout_share), outliers left out of the fit, at most `fit_sample_size` (20,000) of them drawn
by a seeded sample: centroids of five to eight clusters in 25 dimensions are pinned down long
before that, and the six fits of ten starts otherwise grow with the shop. Measured on 30,000
simulated customers x 730 days (38,946 training customers; one run, another job on the cores):
every k's Davies-Bouldin index within 0.02 of the whole set's, the same k (5), held-out inertia
reduction 0.4505 against 0.4506 and silhouette gain 0.073 against 0.073, cluster assignments
agreeing at ARI 0.98, and the run 17.9 s against 27.8 s (10,000: same k, ARI 0.98, 13.9 s).
- k: every k in [k_min, k_max] (default 4-8: fewer than four segments is too coarse for a
  marketing team to act on, more than eight too many to name, staff and track) is fitted, and the
  k with the lowest Davies-Bouldin index of its training fit is chosen (ties: the smaller k). The
  index averages, over the clusters, the worst ratio of two clusters' spreads to the distance
  between their centroids: lower is more compact, better separated clusters. It has no
  parameter to set and, unlike the silhouette, does not fall steadily with k on customer data (a
  continuum more than blobs), so it can pick any k of the range. Measured on 4,000 simulated
  customers x 13 months (three simulation seeds; ARI of clusters vs the planted personas among
  customers with 3+ orders; the simulator plants six personas, which no criterion is told):

      k                      4      5      6      7      8
      Davies-Bouldin     1.672  1.659  1.824  1.806  1.841   seed 3 (chosen: 5)
                         1.676  1.671  1.844  1.810  1.863   seed 7 (chosen: 5)
                         1.719  1.688  1.804  1.796  1.857   seed 11 (chosen: 5)
      ARI vs personas     0.45   0.63   0.64   0.61   0.57   seed 3
                          0.46   0.60   0.63   0.59   0.56   seed 7
                          0.42   0.56   0.59   0.56   0.53   seed 11

  Davies-Bouldin chose 5 on every seed, and on each with four other k-means / hold-out seeds.
  The ARI of 5 (0.56-0.63) is a little under the 0.59-0.64 of 6 and well over the 0.42-0.46 of 4;
  on seed 11 no k reaches 0.6 (tests/test_clustering_truth.py asks it of seed 3: 0.63).
  Other criteria measured on the same data and rejected: the silhouette and Calinski-Harabasz
  fall (almost) steadily with k, so they always take k_min (4, ARI 0.42-0.46); resampling
  stability (k-means on two seeded 80% subsamples, ARI on the customers both hold; Ben-Hur et al.,
  Lange et al.) is highest at 4 or 5, and its "largest k still stable at ARI >= 0.9" rule gives
  anything from 4 to 8 on seed 11 depending on the resampling seed and n_init; prediction strength
  (Tibshirani-Walther, largest k >= 0.8) gives 3, 6 and 5 on the three seeds; the gap statistic
  rises through the whole range (its one-standard-error rule never stops); a Gaussian mixture's
  BIC (diagonal or full covariances, on a 3,000-customer sample) keeps falling to 7-8, as mixtures
  add components for non-Gaussian shapes; the held-out inertia elbow (stop when one more cluster
  explains under 5% more) gives 6, 6 and 5, by a hair's breadth. `silhouette_by_k` and
  `davies_bouldin_by_k` are both in the metrics. At about 100,000 scored customers the fit and
  scoring together took about 12 s on two cores (9 s with the three fits of the former 6-8 range).
- Quality, on the held-out customers the fit never saw (metrics `heldout_silhouette`, and
  `heldout_inertia_reduction`: 1 - their squared distance to their nearest centroid over their
  squared distance to the training mean, i.e. the share of the held-out spread the clusters
  explain; `heldout_inertia_reduction_vs_random` compares with centroids assigned at random),
  each against a reference: the same k fitted and held out on customers drawn from one Gaussian
  with the training customers' mean and covariance (spreads and correlations kept, clusters
  gone): `null_heldout_silhouette`, `null_heldout_inertia_reduction`, and the gains over them,
  `heldout_silhouette_gain` and `heldout_inertia_reduction_gain`. Absolute silhouettes move with
  the data's size and age; the gain says whether there are clusters at all. The spec's floor reads
  `judged_silhouette_gain`: the gain when at least HOLDOUT_MIN_FOR_FLOOR customers were held out,
  else None (not judged, `quality_note` says why): on small samples the gain swings.
  The published model is that fitted model: every customer gets its nearest centroid, on the fit's
  day and on the later days that reuse it (the features filled and scaled as at the fit: a category
  the fit did not know is left out, one it knew that no customer has now is 0).
- Stable ids: each centroid is stored in the profiles in transformed, unscaled units (JSON), so
  the next run can standardise the previous centroids with *its own* scaling and weights and match
  them to its centroids by the Hungarian algorithm on Euclidean distance. A matched cluster keeps
  its previous id unless the distance exceeds `id_match_max_distance`; any other cluster gets a new
  id above the previous run's highest (first run: 1..k by decreasing size). A day scored with the
  previous day's fit finds its centroids again at distance 0: every id is kept.
- Labels: from the features whose cluster mean stands out (|z| >= 0.5 in the standardised units),
  strongest first, at most `label_traits` of them, written in a fixed order, e.g. "lapsed
  occasional buyers", "frequent store grocery buyers", "discount-driven web buyers"; a clash
  within a run adds the next trait, and an id suffix as a last resort: labels are unique.

Outliers. DBSCAN on a seeded sample (at most `outlier_sample_size` customers) of the weighted
vectors, with min_samples = `outlier_min_samples` and eps the `outlier_density_quantile`
quantile of the sample's distances to their min_samples-th nearest neighbour (itself included, as
DBSCAN counts): so about that share of the sample are core points. Every customer farther than
eps from every core point of the sample is an outlier (DBSCAN's noise rule, applied to all
customers): at most about 1 - quantile of them. Outliers still get their nearest cluster.

Migration. Customers are matched by customer_id with the previous as-of date's segments: per
kind ('rfm': segment names; 'cluster': cluster ids as text), the count of customers for each
(from, to) pair, staying ones included. A customer scored now but not then comes from
'new_customer' (a first revenue order, or an identity newly resolved); one scored then but not now
goes to 'gone' (merged into another customer, deleted, or every order returned). No previous run:
no migration rows.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from ml_tasks.contract import BadParameter, InsufficientData, check_range, float_values, typed_results

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# The silhouette gain is judged against the floor on at least this many held-out customers: on
# fewer it swings with the sample (56 held-out of 90 days of 400 simulated customers: 0.039; 60
# days of 1,000: 0.047; 13 months of 4,000, 957 held out: 0.071).
HOLDOUT_MIN_FOR_FLOOR = 500
MODEL_VERSION = "segments-6"  # 6: fitted, stored and reused for later days (feature filling fixed at the fit); 5: k-means fitted on at most fit_sample_size customers; 4: floor on the gain over a one-Gaussian reference; 3: k in 4-8 by Davies-Bouldin
FEATURES = "features.customer_features"
CATEGORY_MIX = "features.customer_category_mix"
SEGMENTS = "ml.customer_segments"
PROFILES = "ml.segment_profiles"
MIGRATION = "ml.segment_migration"
NEW_CUSTOMER, GONE = "new_customer", "gone"

# (segment, rule on r = r_score, f = f_score, m = m_score, fm = (f + m) / 2, what it means);
# the first rule that holds names the segment, the last one catches the rest.
SEGMENT_RULES: tuple[tuple[str, str, str], ...] = (
    ("champions", "r >= 4 and fm >= 4", "bought recently, buy often and spend the most"),
    ("loyal", "r >= 3 and fm >= 3", "buy often and much, and not long ago"),
    ("cant_lose", "r == 1 and fm >= 4", "were among the best, have not bought for the longest"),
    ("at_risk", "r <= 2 and fm >= 3", "bought often and much, but long ago"),
    ("new", "r == 5 and f == 1", "first and only order very recently"),
    ("potential_loyalist", "r >= 4 and fm >= 2", "recent, with average frequency and spend"),
    ("promising", "r >= 4", "recent, with few orders and little spend"),
    ("need_attention", "r == 3 and fm >= 2", "half-way on recency, average frequency and spend"),
    ("about_to_sleep", "r == 3", "half-way on recency, few orders and little spend"),
    ("hibernating", "r == 2", "long since the last order, few orders and little spend"),
    ("lost", "r == 1", "the longest since the last order, few orders and little spend"),
)
SEGMENT_NAMES = tuple(rule[0] for rule in SEGMENT_RULES)

# Cluster feature -> (group, how it is made from customer_features). "category:<name>" columns
# (spend share per category, from customer_category_mix) join the "category" group.
CLUSTER_FEATURES: dict[str, tuple[str, str]] = {
    "recency": ("recency", "log1p(min(recency_days, recency_cap_days))"),
    "frequency": ("frequency", "log1p(frequency)"),
    "recent_frequency": ("frequency", "log1p(frequency_last_90_days)"),
    "monetary": ("monetary", "log1p(monetary)"),
    "average_order_value": ("basket", "log1p(average_order_value)"),
    "items_per_order": ("basket", "log1p(items_per_order)"),
    "tenure": ("tenure", "log1p(tenure_days)"),
    "discount_share": ("price", "discount_share"),
    "return_rate": ("service", "return_rate"),
    "web_share": ("channel", "web_share"),
    "store_share": ("channel", "store_share"),
    "phone_share": ("channel", "phone_share"),
    "tickets": ("service", "log1p(tickets_opened)"),
    "bad_service": ("service", "log1p(dissatisfied_tickets + slow_reply_tickets + unresolved_tickets)"),
    "complaints": ("service", "log1p(complaint_interactions)"),
    "campaign_response": ("campaign", "campaign_response_rate (median when no campaign was received)"),
}
GROUP_WEIGHTS: dict[str, float] = {
    # Recency, frequency and monetary value move together (one "how active" axis): at 0.7 each
    # they weigh about as much as two of the independent groups below, not three.
    "recency": 0.7,
    "frequency": 0.7,
    "monetary": 0.7,
    "basket": 1.0,
    "price": 1.0,
    "channel": 1.0,
    "category": 1.0,
    # What happened to the customer more than how they buy: context, weighed in lightly.
    "tenure": 0.25,
    "service": 0.25,
    "campaign": 0.25,
}
CHANNELS = ("web", "store", "phone")

# Label traits: (feature, direction, word, slot); slots give the word order of a label.
_TRAITS: tuple[tuple[str, int, str, str], ...] = (
    ("recency", +1, "lapsed", "state"),
    ("recency", -1, "active", "state"),
    ("frequency", +1, "frequent", "frequency"),
    ("frequency", -1, "occasional", "frequency"),
    ("discount_share", +1, "discount-driven", "price"),
    ("return_rate", +1, "returning", "price"),
    ("average_order_value", +1, "big-basket", "value"),
    ("monetary", +1, "high-spending", "value"),
    ("bad_service", +1, "unhappy", "service"),
    ("campaign_response", +1, "campaign-responsive", "campaign"),
    ("web_share", +1, "web", "channel"),
    ("store_share", +1, "store", "channel"),
    ("phone_share", +1, "phone", "channel"),
)
_SLOTS = ("state", "frequency", "price", "value", "service", "campaign", "channel", "category")
_TRAIT_THRESHOLD = 0.5

_FEATURE_COLUMNS = (
    "customer_id", "tenure_days", "frequency", "monetary", "average_order_value", "recency_days",
    "frequency_last_90_days", "return_rate", "discount_share", "items_per_order", "web_share",
    "store_share", "phone_share", "tickets_opened", "unresolved_tickets", "slow_reply_tickets",
    "dissatisfied_tickets", "complaint_interactions", "campaigns_received", "campaign_response_rate",
)

SEGMENT_COLUMNS: dict[str, str] = {
    "customer_id": "string",
    "recency_days": "integer",
    "frequency": "integer",
    "monetary": "double",
    "r_score": "integer",
    "f_score": "integer",
    "m_score": "integer",
    "rfm_segment": "string",
    "cluster_id": "integer",
    "cluster_label": "string",
    "distance_to_centroid": "double",
    "is_outlier": "boolean",
}
PROFILE_COLUMNS: dict[str, str] = {
    "kind": "string",
    "segment": "string",
    "cluster_id": "integer",
    "label": "string",
    "customers": "integer",
    "share": "double",
    "outliers": "integer",
    "mean_recency_days": "double",
    "mean_frequency": "double",
    "mean_monetary": "double",
    "mean_average_order_value": "double",
    "mean_items_per_order": "double",
    "mean_discount_share": "double",
    "mean_return_rate": "double",
    "mean_tenure_days": "double",
    "mean_tickets_opened": "double",
    "top_categories": "string",
    "main_channel": "string",
    "centroid": "string",
}
MIGRATION_COLUMNS: dict[str, str] = {
    "kind": "string",
    "previous_as_of_date": "date",
    "from_segment": "string",
    "to_segment": "string",
    "customers": "integer",
}


@dataclass(frozen=True)
class SegmentSettings:
    k_min: int = field(default=4, metadata={"doc": "fewest behavioural clusters tried (the one with the lowest Davies-Bouldin index is kept)"})
    k_max: int = field(default=8, metadata={"doc": "most behavioural clusters tried"})
    n_init: int = field(default=10, metadata={"doc": "k-means starts per k: a single start lands in a worse optimum now and then"})
    random_state: int = field(default=0, metadata={"doc": "seed of every sample, split and k-means start"})
    min_customers: int = field(default=50, metadata={"doc": (
        "fewer customers with a revenue order than this (or than 10 x k_max): insufficient data")})
    holdout_share: float = field(default=0.2, metadata={"doc": (
        "share of the customers held out of the fit to measure the clusters' quality on")})
    silhouette_sample_size: int = field(default=3000, metadata={"doc": "customers the silhouette is measured on at most"})
    fit_sample_size: int = field(default=20_000, metadata={"doc": (
        "training customers the k-means fits see at most (a seeded sample; the centroids are pinned down long before)")})
    recency_cap_days: int = field(default=365, metadata={"doc": "recency counted up to this many days: a year away or three is as lapsed"})
    outlier_sample_size: int = field(default=5000, metadata={"doc": "customers the outlier rule (DBSCAN) is fitted on at most"})
    outlier_min_samples: int = field(default=10, metadata={"doc": "neighbours a customer needs to be a core point of the outlier rule"})
    outlier_density_quantile: float = field(default=0.99, metadata={"doc": (
        "share of the sample that are core points: about 1 minus it are outliers at most")})
    id_match_max_distance: float = field(default=3.0, metadata={"doc": (
        "farthest a cluster may be from the previous run's (standardised units) and keep its id")})
    label_traits: int = field(default=3, metadata={"doc": "traits a cluster's label names at most, e.g. 'frequent store grocery buyers'"})
    share_prior_orders: float = field(default=4.0, metadata={"doc": (
        "shares (discount, returns, channels, categories, campaign response) are shrunk towards the mean share as if"
        " this many more orders had shown it: a customer of few orders says little")})

    def __post_init__(self) -> None:
        check_range("k_min", self.k_min, minimum=2, maximum=50, kind=int)
        check_range("k_max", self.k_max, minimum=2, maximum=50, kind=int)
        if self.k_max < self.k_min:
            raise BadParameter(f"k_max: got {self.k_max}, expected at least k_min ({self.k_min})")
        check_range("n_init", self.n_init, minimum=1, maximum=100, kind=int)
        check_range("random_state", self.random_state, minimum=0, maximum=2**32 - 1, kind=int)
        check_range("min_customers", self.min_customers, minimum=10, kind=int)
        check_range("holdout_share", self.holdout_share, minimum=0.05, maximum=0.5)
        check_range("silhouette_sample_size", self.silhouette_sample_size, minimum=100, maximum=50_000, kind=int)
        check_range("fit_sample_size", self.fit_sample_size, minimum=1_000, maximum=10_000_000, kind=int)
        check_range("recency_cap_days", self.recency_cap_days, minimum=1, kind=int)
        check_range("outlier_sample_size", self.outlier_sample_size, minimum=100, maximum=50_000, kind=int)
        check_range("outlier_min_samples", self.outlier_min_samples, minimum=2, maximum=100, kind=int)
        check_range("outlier_density_quantile", self.outlier_density_quantile, minimum=0.5, maximum=1.0)
        check_range("id_match_max_distance", self.id_match_max_distance, minimum=0.0)
        check_range("label_traits", self.label_traits, minimum=1, maximum=len(_SLOTS), kind=int)
        check_range("share_prior_orders", self.share_prior_orders, minimum=0.0, maximum=100.0)

    @property
    def minimum_customers(self) -> int:
        return max(self.min_customers, 10 * self.k_max)


# ---- fit and score -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SegmentModel:
    """What scoring needs from a fit: how the features were filled, scaled and weighted, the
    centroids (weighted space), the outlier rule (the sample's core points and eps) and reference
    samples of the fit's customers for drift."""

    fill: "FeatureFill"
    space: "FeatureSpace"
    centroids: "np.ndarray"
    outlier_core: "np.ndarray"
    outlier_eps: float
    reference: dict[str, "np.ndarray"]


def fit(training: Mapping[str, "pd.DataFrame"], as_of_date: dt.date, settings: SegmentSettings) -> tuple[SegmentModel, dict]:
    """The feature space, outlier rule and k-means centroids of the customers with a revenue order
    on `as_of_date`, with the quality of the clusters on held-out customers."""
    buyers = _buyers(training[FEATURES])
    if len(buyers) < settings.minimum_customers:
        raise InsufficientData(
            f"{len(buyers)} customers with a revenue order on {as_of_date}, expected at least "
            f"{settings.minimum_customers} (max of min_customers and 10 x k_max) to cluster"
        )
    raw, fill = feature_matrix(buyers, training.get(CATEGORY_MIX), settings)
    space = FeatureSpace.fit(raw)
    points = space.transform(raw)
    core, eps = fit_outliers(points, settings)
    clusters = fit_clusters(points, outliers(points, core, eps), settings)
    _, distances = nearest_centroids(points, clusters.centroids)
    model = SegmentModel(fill, space, clusters.centroids, core, eps, _drift_columns(raw, distances, reference=True))
    metrics: dict[str, Any] = {
        "features": list(raw.columns),
        "k": int(len(clusters.centroids)),
        "silhouette_by_k": {str(k): round(value, 6) for k, value in clusters.silhouettes.items()},
        "davies_bouldin_by_k": {str(k): round(value, 6) if math.isfinite(value) else None for k, value in clusters.davies_bouldin.items()},
        "train_customers": clusters.train_customers,
        "heldout_customers": clusters.heldout_customers,
        "heldout_silhouette": round(clusters.heldout_silhouette, 6),
        "heldout_inertia_reduction": round(clusters.heldout_inertia_reduction, 6),
        "heldout_inertia_reduction_vs_random": round(clusters.heldout_inertia_reduction_vs_random, 6),
        "null_heldout_silhouette": round(clusters.null_heldout_silhouette, 6),
        "null_heldout_inertia_reduction": round(clusters.null_heldout_inertia_reduction, 6),
        "heldout_silhouette_gain": round(clusters.heldout_silhouette - clusters.null_heldout_silhouette, 6),
        "heldout_inertia_reduction_gain": round(clusters.heldout_inertia_reduction - clusters.null_heldout_inertia_reduction, 6),
        # The spec's floor, judged on enough held-out customers only (see HOLDOUT_MIN_FOR_FLOOR).
        "judged_silhouette_gain": (
            round(clusters.heldout_silhouette - clusters.null_heldout_silhouette, 6)
            if clusters.heldout_customers >= HOLDOUT_MIN_FOR_FLOOR else None
        ),
        "quality_note": (
            "" if clusters.heldout_customers >= HOLDOUT_MIN_FOR_FLOOR
            else f"{clusters.heldout_customers} held-out customers, fewer than {HOLDOUT_MIN_FOR_FLOOR}: quality recorded, not judged"
        ),
    }
    return model, metrics


def score(fitted: SegmentModel, inputs: Mapping[str, "pd.DataFrame"], as_of_date: dt.date,
          settings: SegmentSettings) -> tuple[dict[str, "pd.DataFrame"], dict]:
    """Segments, profiles and migrations of the customers with a revenue order on `as_of_date`,
    each in the fitted cluster nearest to them."""
    import numpy as np
    import pandas as pd

    from ml_tasks.monitoring import drift_report

    features = inputs[FEATURES]
    mix = inputs.get(CATEGORY_MIX)
    buyers = _buyers(features)
    if buyers.empty:
        raise InsufficientData(f"no customer with a revenue order on {as_of_date}")
    segments = score_rfm(buyers)
    raw, _ = feature_matrix(buyers, mix, settings, fitted.fill)
    points = fitted.space.transform(raw)
    outlier = outliers(points, fitted.outlier_core, fitted.outlier_eps)
    positions, distances = nearest_centroids(points, fitted.centroids)
    centroids_raw = fitted.space.inverse(fitted.centroids)
    previous_profiles = _previous(inputs, PROFILES)
    sizes = np.bincount(positions, minlength=len(fitted.centroids))
    ids, matched = stable_ids(fitted.centroids, sizes, previous_profiles, fitted.space, settings)
    cluster_ids = ids[positions]
    zscores = _cluster_zscores(raw, fitted.space, positions, len(fitted.centroids))
    labels_by_cluster = cluster_labels(zscores, ids, buyers["frequency"].to_numpy(), positions, settings)

    segments["cluster_id"] = pd.array(cluster_ids, dtype="Int64")
    segments["cluster_label"] = pd.array([labels_by_cluster[i] for i in cluster_ids], dtype="str")
    segments["distance_to_centroid"] = np.round(distances, 6)
    segments["is_outlier"] = pd.array(outlier, dtype="boolean")
    segments = typed_results(segments, SEGMENT_COLUMNS)

    centroid_json = {
        ids[index]: json.dumps({name: round(float(value), 6) for name, value in zip(raw.columns, centroids_raw[index])}, sort_keys=True)
        for index in range(len(ids))
    }
    profiles = segment_profiles(segments, buyers, mix, labels_by_cluster, centroid_json)
    previous_segments = _previous(inputs, SEGMENTS)
    migration = segment_migration(segments, previous_segments)

    shares = segments["rfm_segment"].value_counts(normalize=True)
    cluster_sizes = segments["cluster_id"].value_counts().sort_index()
    metrics: dict[str, Any] = {
        "customers_known": int(len(features)),
        "customers_scored": int(len(segments)),
        "cluster_sizes": {str(int(key)): int(value) for key, value in cluster_sizes.items()},
        "cluster_labels": {str(key): labels_by_cluster[key] for key in sorted(labels_by_cluster)},
        "clusters_matched": matched,
        "clusters_new": int(len(ids) - matched),
        "segment_share": {name: round(float(shares.get(name, 0.0)), 6) for name in SEGMENT_NAMES if name in shares},
        "outliers": int(outlier.sum()),
        "outlier_share": round(float(outlier.mean()), 6),
        "migration": _migration_summary(migration),
        "drift_psi": drift_report(fitted.reference, _drift_columns(raw, distances)),
    }
    return {SEGMENTS: segments, PROFILES: profiles, MIGRATION: migration}, metrics


# Watched for drift against the fit: how far customers sit from their centroid (a population the
# centroids no longer describe sits farther), and the transformed recency, frequency and spend.
_DRIFT_FEATURES = ("recency", "frequency", "monetary")


def _drift_columns(raw: "pd.DataFrame", distances: "np.ndarray", reference: bool = False) -> dict[str, "np.ndarray"]:
    from ml_tasks.monitoring import reference_sample

    columns = {"distance_to_centroid": distances, **{name: raw[name].to_numpy() for name in _DRIFT_FEATURES}}
    return {name: reference_sample(values) for name, values in columns.items()} if reference else columns


def _previous(inputs: Mapping[str, "pd.DataFrame"], table: str) -> "pd.DataFrame | None":
    frame = inputs.get(f"previous:{table}")
    return None if frame is None or frame.empty else frame


def _buyers(features: "pd.DataFrame") -> "pd.DataFrame":
    """Customers with a revenue order, sorted by customer_id, with the numeric columns as floats."""
    missing = [column for column in _FEATURE_COLUMNS if column not in features.columns]
    if missing:
        raise ValueError(f"{FEATURES}: missing column(s) {', '.join(missing)}")
    frame = features.loc[:, list(_FEATURE_COLUMNS)].copy()
    frame["customer_id"] = frame["customer_id"].astype("str")
    if frame["customer_id"].duplicated().any():
        duplicate = frame.loc[frame["customer_id"].duplicated(), "customer_id"].iloc[0]
        raise ValueError(f"{FEATURES}: customer {duplicate!r} appears more than once; expected one row per customer")
    for column in _FEATURE_COLUMNS[1:]:
        frame[column] = float_values(frame[column])
    frame = frame[frame["frequency"].fillna(0) >= 1]
    return frame.sort_values("customer_id", kind="stable").reset_index(drop=True)


def _positions(customer_ids: "pd.Series", among: "pd.Series") -> "np.ndarray":
    """Each of `customer_ids`' position in `among` (unique ids), -1 where it is not there. One hash
    lookup in Arrow replaces a join on the text key: at a million customers pandas' joins, pivots and
    groupings on customer_id took 27 of scoring's 52 s (pandas hashes Arrow text as Python objects)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def arrow(ids: "pd.Series") -> "pa.Array":
        values = pa.array(ids.astype("str"))
        values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        return values.cast(pa.large_string())

    found = pc.index_in(arrow(customer_ids), value_set=arrow(among))
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype("int64")


# ---- RFM segments -----------------------------------------------------------------------------------

def _quintile(values: "pd.Series", ascending: bool) -> "np.ndarray":
    """Score 1-5 by rank; ties broken by row order (sorted by customer_id), so scores are stable."""
    ranks = values.rank(method="first", ascending=ascending).to_numpy()
    return (((ranks - 1) * 5) // len(values) + 1).astype("int64")


def score_rfm(buyers: "pd.DataFrame") -> "pd.DataFrame":
    """customer_id, recency_days, frequency, monetary, the 1-5 scores and rfm_segment, sorted by
    customer_id; `buyers` holds one row per customer with a revenue order."""
    import numpy as np
    import pandas as pd

    frame = buyers.sort_values("customer_id", kind="stable").reset_index(drop=True)
    scored = pd.DataFrame({
        "customer_id": frame["customer_id"].astype("str"),
        "recency_days": frame["recency_days"].astype("float64"),
        "frequency": frame["frequency"].astype("float64"),
        "monetary": frame["monetary"].astype("float64"),
    })
    scored["r_score"] = _quintile(scored["recency_days"], ascending=False)
    scored["f_score"] = _quintile(scored["frequency"], ascending=True)
    scored["m_score"] = _quintile(scored["monetary"], ascending=True)
    scored["rfm_segment"] = segment_of(scored["r_score"].to_numpy(), scored["f_score"].to_numpy(), scored["m_score"].to_numpy())
    scored["rfm_segment"] = scored["rfm_segment"].astype("str")
    assert not np.any(scored["rfm_segment"] == ""), "SEGMENT_RULES must cover every score"
    return scored


def segment_of(r: "np.ndarray", f: "np.ndarray", m: "np.ndarray") -> "np.ndarray":
    """The segment of each (r, f, m) score triple by SEGMENT_RULES (first rule that holds)."""
    import numpy as np
    import pandas as pd

    scores = pd.DataFrame({"r": r, "f": f, "m": m})
    scores["fm"] = (scores["f"] + scores["m"]) / 2
    segment = np.full(len(scores), "", dtype=object)
    for name, rule, _ in SEGMENT_RULES:
        hit = (segment == "") & scores.eval(rule).to_numpy(dtype=bool)
        segment[hit] = name
    return segment


# ---- the feature space ------------------------------------------------------------------------------

@dataclass(frozen=True)
class FeatureFill:
    """How feature_matrix fills in, fixed by the fit so a later day's customers are placed in the
    same space: the columns (the categories then), each share's mean (what the shares of customers
    with few orders shrink towards) and each column's median (what a missing value takes)."""

    columns: tuple[str, ...]
    share_means: dict[str, float]
    medians: dict[str, float]


def feature_matrix(buyers: "pd.DataFrame", mix: "pd.DataFrame | None", settings: SegmentSettings,
                   fill: FeatureFill | None = None) -> tuple["pd.DataFrame", FeatureFill]:
    """The transformed, unscaled cluster features (CLUSTER_FEATURES, then one "category:<name>" spend
    share per category), one row per buyer in `buyers` order, and how it was filled in. A missing
    value (a share of a customer without lines, a response rate without campaigns) takes the
    column's median. With a `fill` (a fit's), its columns (a category it lacks is left out, one it
    has but these customers lack is 0), share means and medians are used."""
    import numpy as np
    import pandas as pd

    def log1p(values: "pd.Series") -> "pd.Series":
        return np.log1p(values.clip(lower=0))

    b = buyers
    columns = {
        "recency": log1p(b["recency_days"].clip(upper=settings.recency_cap_days)),
        "frequency": log1p(b["frequency"]),
        "recent_frequency": log1p(b["frequency_last_90_days"]),
        "monetary": log1p(b["monetary"]),
        "average_order_value": log1p(b["average_order_value"]),
        "items_per_order": log1p(b["items_per_order"]),
        "tenure": log1p(b["tenure_days"]),
        "discount_share": b["discount_share"],
        "return_rate": b["return_rate"],
        "web_share": b["web_share"],
        "store_share": b["store_share"],
        "phone_share": b["phone_share"],
        "tickets": log1p(b["tickets_opened"]),
        "bad_service": log1p(b["dissatisfied_tickets"].fillna(0) + b["slow_reply_tickets"].fillna(0) + b["unresolved_tickets"].fillna(0)),
        "complaints": log1p(b["complaint_interactions"]),
        "campaign_response": b["campaign_response_rate"],
    }
    matrix = pd.DataFrame({name: columns[name].to_numpy(dtype="float64") for name in CLUSTER_FEATURES})
    shares = category_shares(mix, b["customer_id"])
    matrix = pd.concat([matrix, shares.reset_index(drop=True)], axis=1)
    if fill is not None:
        matrix = matrix.reindex(columns=list(fill.columns), fill_value=0.0)
    prior = settings.share_prior_orders
    orders = b["frequency"].fillna(0).to_numpy(dtype="float64")
    campaigns = b["campaigns_received"].fillna(0).to_numpy(dtype="float64")
    share_means: dict[str, float] = {}
    for name in matrix.columns:
        if name in _SHARES or name.startswith("category:"):
            evidence = campaigns if name == "campaign_response" else orders
            values = matrix[name].to_numpy()
            if fill is not None:
                mean = fill.share_means[name]
            else:
                mean = float(np.nanmean(values)) if np.isfinite(values).any() else 0.0
            share_means[name] = mean
            seen = np.where(np.isfinite(values), evidence, 0.0)
            weight = seen + prior
            shrunk = (seen * np.nan_to_num(values, nan=mean) + prior * mean) / np.where(weight > 0, weight, 1.0)
            matrix[name] = np.where(weight > 0, shrunk, mean)
    if fill is None:
        medians = matrix.median(skipna=True).fillna(0.0)
        fill = FeatureFill(tuple(matrix.columns), share_means, {name: float(value) for name, value in medians.items()})
    return matrix.fillna(fill.medians), fill


_SHARES = ("discount_share", "return_rate", "web_share", "store_share", "phone_share", "campaign_response")


def category_shares(mix: "pd.DataFrame | None", customer_ids: "pd.Series") -> "pd.DataFrame":
    """Spend share per category, wide ("category:<name>" columns, sorted), one row per customer of
    `customer_ids` (unique) in order; 0 where a customer has no spend in a category."""
    import numpy as np
    import pandas as pd

    if mix is None or mix.empty:
        return pd.DataFrame(index=range(len(customer_ids)))
    position = _positions(mix["customer_id"], customer_ids)
    category, names = pd.factorize(mix["category"].astype("str"), sort=True)
    share = float_values(mix["spend_share"])
    share = np.where(np.isnan(share), 0.0, share)
    kept = (position >= 0) & (category >= 0)
    cells = np.bincount(position[kept] * len(names) + category[kept], weights=share[kept],
                        minlength=len(customer_ids) * len(names))
    return pd.DataFrame(cells.reshape(len(customer_ids), len(names)), columns=[f"category:{name}" for name in names])


def _group(feature: str) -> str:
    return "category" if feature.startswith("category:") else CLUSTER_FEATURES[feature][0]


@dataclass(frozen=True)
class FeatureSpace:
    """Standardise (z-score) then weight by feature group: weight / sqrt(columns in the group)."""

    columns: tuple[str, ...]
    mean: "np.ndarray"
    scale: "np.ndarray"
    weight: "np.ndarray"

    @classmethod
    def fit(cls, raw: "pd.DataFrame") -> "FeatureSpace":
        import numpy as np

        values = raw.to_numpy(dtype="float64")
        mean = values.mean(axis=0)
        scale = values.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        groups = [_group(name) for name in raw.columns]
        weight = np.array([GROUP_WEIGHTS[group] / math.sqrt(groups.count(group)) for group in groups])
        return cls(tuple(raw.columns), mean, scale, weight)

    def standardise(self, raw: "pd.DataFrame | np.ndarray") -> "np.ndarray":
        import numpy as np

        return (np.asarray(raw, dtype="float64") - self.mean) / self.scale

    def transform(self, raw: "pd.DataFrame | np.ndarray") -> "np.ndarray":
        return self.standardise(raw) * self.weight

    def inverse(self, points: "np.ndarray") -> "np.ndarray":
        return points / self.weight * self.scale + self.mean

    def from_json(self, centroid: str) -> "np.ndarray":
        """A stored centroid (transformed, unscaled) in this space; a feature it lacks takes this
        space's mean (neutral: 0 after standardising)."""
        import numpy as np

        values = json.loads(centroid)
        raw = np.array([float(values.get(name, mean)) for name, mean in zip(self.columns, self.mean)])
        return self.transform(raw)


# ---- outliers ---------------------------------------------------------------------------------------

def _sample(count: int, size: int, random_state: int, salt: int) -> "np.ndarray":
    """A seeded sample of row positions (sorted), all rows when there are no more than `size`."""
    import numpy as np

    if count <= size:
        return np.arange(count)
    return np.sort(np.random.default_rng([random_state, salt]).choice(count, size=size, replace=False))


def fit_outliers(points: "np.ndarray", settings: SegmentSettings) -> tuple["np.ndarray", float]:
    """The core points of a DBSCAN fit on a seeded sample, and its eps (see the module docstring)."""
    import numpy as np
    from sklearn.cluster import DBSCAN
    from sklearn.neighbors import NearestNeighbors

    sample = points[_sample(len(points), settings.outlier_sample_size, settings.random_state, 1)]
    neighbours = min(settings.outlier_min_samples, len(sample))
    distances, _ = NearestNeighbors(n_neighbors=neighbours).fit(sample).kneighbors(sample)
    eps = max(float(np.quantile(distances[:, -1], settings.outlier_density_quantile)), 1e-9)
    density = DBSCAN(eps=eps, min_samples=neighbours).fit(sample)
    return sample[density.core_sample_indices_], eps


def outliers(points: "np.ndarray", core: "np.ndarray", eps: float) -> "np.ndarray":
    """True for customers farther than eps from every core point."""
    import numpy as np
    from sklearn.neighbors import NearestNeighbors

    if len(core) == 0:
        return np.zeros(len(points), dtype=bool)
    nearest, _ = NearestNeighbors(n_neighbors=1).fit(core).kneighbors(points)
    return nearest[:, 0] > eps


# ---- k-means ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClusterFit:
    centroids: "np.ndarray"  # in the weighted space
    silhouettes: dict[int, float]
    davies_bouldin: dict[int, float]
    train_customers: int
    heldout_customers: int
    heldout_silhouette: float
    heldout_inertia_reduction: float
    heldout_inertia_reduction_vs_random: float
    # The same k fitted and held out on customers drawn from one Gaussian with the training
    # customers' mean and covariance: spreads and correlations kept, clusters gone. What k-means
    # finds in data without any cluster.
    null_heldout_silhouette: float
    null_heldout_inertia_reduction: float


def fit_clusters(points: "np.ndarray", outlier: "np.ndarray", settings: SegmentSettings) -> ClusterFit:
    """k-means on the seeded training share (outliers left out) for every k; the k of the lowest
    Davies-Bouldin index (see the module docstring); quality of that fit on the held-out customers."""
    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.metrics import davies_bouldin_score, silhouette_score

    rng = np.random.default_rng([settings.random_state, 2])
    heldout = np.zeros(len(points), dtype=bool)
    heldout[rng.permutation(len(points))[: max(1, round(settings.holdout_share * len(points)))]] = True
    train = points[~heldout & ~outlier]
    if len(train) < 2 * settings.k_max:
        train = points[~heldout]
    train = train[_sample(len(train), settings.fit_sample_size, settings.random_state, 7)]
    silhouette_rows = _sample(len(train), settings.silhouette_sample_size, settings.random_state, 3)
    models: dict[int, Any] = {}
    silhouettes: dict[int, float] = {}
    davies_bouldin: dict[int, float] = {}
    for k in range(settings.k_min, settings.k_max + 1):
        model = KMeans(n_clusters=k, n_init=settings.n_init, random_state=settings.random_state).fit(train)
        models[k] = model
        labels = model.labels_[silhouette_rows]
        silhouettes[k] = float(silhouette_score(train[silhouette_rows], labels)) if len(set(labels)) > 1 else -1.0
        # Fewer distinct clusters than k (duplicate points): never chosen.
        distinct = len(set(model.labels_)) == k
        davies_bouldin[k] = float(davies_bouldin_score(train, model.labels_)) if distinct else math.inf
    k = min(davies_bouldin, key=lambda candidate: (davies_bouldin[candidate], candidate))
    centroids = models[k].cluster_centers_

    test = points[heldout]
    test_rows = _sample(len(test), settings.silhouette_sample_size, settings.random_state, 4)
    heldout_silhouette, heldout_reduction = _heldout_quality(train, test, centroids, test_rows)
    random_labels = np.random.default_rng([settings.random_state, 5]).integers(0, k, size=len(test))
    random_within = float(_squared_distances(test, centroids)[np.arange(len(test)), random_labels].sum())
    reference = np.random.default_rng([settings.random_state, 6])
    mean, covariance = train.mean(axis=0), np.cov(train, rowvar=False)
    null_train, null_test = (reference.multivariate_normal(mean, covariance, size=len(part), method="eigh") for part in (train, test))
    null_model = KMeans(n_clusters=k, n_init=settings.n_init, random_state=settings.random_state).fit(null_train)
    null_silhouette, null_reduction = _heldout_quality(null_train, null_test, null_model.cluster_centers_, test_rows)
    return ClusterFit(
        centroids=centroids,
        silhouettes=silhouettes,
        davies_bouldin=davies_bouldin,
        train_customers=int(len(train)),
        heldout_customers=int(heldout.sum()),
        heldout_silhouette=heldout_silhouette,
        heldout_inertia_reduction=heldout_reduction,
        heldout_inertia_reduction_vs_random=1 - (1 - heldout_reduction) * float(((test - train.mean(axis=0)) ** 2).sum())
        / random_within if random_within > 0 else 0.0,
        null_heldout_silhouette=null_silhouette,
        null_heldout_inertia_reduction=null_reduction,
    )


def _heldout_quality(train: "np.ndarray", test: "np.ndarray", centroids: "np.ndarray", sample: "np.ndarray") -> tuple[float, float]:
    """Silhouette of held-out customers (on a sample) labelled by their nearest centroid, and the
    share of their spread around the training mean that the centroids explain."""
    import numpy as np
    from sklearn.metrics import silhouette_score

    squared = _squared_distances(test, centroids)
    labels = squared.argmin(axis=1)
    silhouette = float(silhouette_score(test[sample], labels[sample])) if len(set(labels[sample])) > 1 else -1.0
    within = float(squared[np.arange(len(test)), labels].sum())
    total = float(((test - train.mean(axis=0)) ** 2).sum())
    return silhouette, 1 - within / total if total > 0 else 0.0


def _squared_distances(points: "np.ndarray", centroids: "np.ndarray") -> "np.ndarray":
    """Squared Euclidean distance of every point to every centroid (points x centroids)."""
    return ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)


def nearest_centroids(points: "np.ndarray", centroids: "np.ndarray") -> tuple["np.ndarray", "np.ndarray"]:
    """Each point's nearest centroid (position) and its distance to it."""
    import numpy as np

    squared = _squared_distances(points, centroids)
    positions = squared.argmin(axis=1)
    return positions, np.sqrt(squared[np.arange(len(points)), positions])


# ---- stable ids and labels ----------------------------------------------------------------------------

def stable_ids(centroids: "np.ndarray", sizes: "np.ndarray", previous_profiles: "pd.DataFrame | None",
               space: FeatureSpace, settings: SegmentSettings) -> tuple["np.ndarray", int]:
    """The id of each centroid (by position) and how many kept a previous id: the Hungarian match
    of this run's centroids to the previous run's (both in this run's space) on Euclidean
    distance, a match farther than id_match_max_distance refused; new ids above the previous
    highest, by decreasing size (then centroid) so they do not depend on k-means' own order."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    ids = np.zeros(len(centroids), dtype="int64")
    previous_ids: list[int] = []
    if previous_profiles is not None:
        clusters = previous_profiles[(previous_profiles["kind"] == "cluster") & previous_profiles["centroid"].notna()]
        clusters = clusters.sort_values("cluster_id")
        previous_ids = [int(value) for value in clusters["cluster_id"]]
        if previous_ids:
            previous = np.array([space.from_json(text) for text in clusters["centroid"]])
            cost = np.sqrt(((centroids[:, None, :] - previous[None, :, :]) ** 2).sum(axis=2))
            for row, column in zip(*linear_sum_assignment(cost)):
                if cost[row, column] <= settings.id_match_max_distance:
                    ids[row] = previous_ids[column]
    matched = int((ids > 0).sum())
    order = sorted(range(len(centroids)), key=lambda index: (-int(sizes[index]), tuple(np.round(centroids[index], 9))))
    next_id = max(previous_ids, default=0) + 1
    for index in order:
        if ids[index] == 0:
            ids[index] = next_id
            next_id += 1
    return ids, matched


def _cluster_zscores(raw: "pd.DataFrame", space: FeatureSpace, labels: "np.ndarray", k: int) -> "pd.DataFrame":
    """Mean standardised (unweighted) value of every feature per cluster position."""
    import pandas as pd

    z = pd.DataFrame(space.standardise(raw), columns=raw.columns)
    return z.groupby(labels).mean().reindex(range(k))


def cluster_labels(zscores: "pd.DataFrame", ids: "np.ndarray", frequency: "np.ndarray", labels: "np.ndarray",
                   settings: SegmentSettings) -> dict[int, str]:
    """A readable, unique label per cluster id from the traits its mean stands out on."""
    import numpy as np

    traits: dict[int, list[tuple[float, str, str]]] = {}
    for position, cluster_id in enumerate(ids):
        row = zscores.iloc[position]
        found: list[tuple[float, str, str]] = []
        for feature, direction, word, slot in _TRAITS:
            value = direction * float(row.get(feature, 0.0))
            if value >= _TRAIT_THRESHOLD:
                if word == "occasional" and np.median(frequency[labels == position]) <= 1:
                    word = "one-time"
                found.append((value, word, slot))
        for feature in zscores.columns:
            if feature.startswith("category:") and float(row[feature]) >= _TRAIT_THRESHOLD:
                found.append((float(row[feature]), feature.split(":", 1)[1], "category"))
        best_per_slot: dict[str, tuple[float, str, str]] = {}
        for trait in sorted(found, key=lambda item: (-item[0], item[1])):
            best_per_slot.setdefault(trait[2], trait)
        traits[int(cluster_id)] = sorted(best_per_slot.values(), key=lambda item: (-item[0], item[1]))

    def label(cluster_id: int, count: int) -> str:
        chosen = traits[cluster_id][:count]
        words = [word for slot in _SLOTS for _, word, trait_slot in chosen if trait_slot == slot]
        return " ".join([*words, "buyers"]) if words else "typical buyers"

    result: dict[int, str] = {}
    for cluster_id in sorted(traits):
        result[cluster_id] = label(cluster_id, settings.label_traits)
    for count in range(settings.label_traits + 1, len(_SLOTS) + 1):
        clashing = [key for key, value in result.items() if list(result.values()).count(value) > 1]
        if not clashing:
            break
        for cluster_id in clashing:
            result[cluster_id] = label(cluster_id, count)
    seen: set[str] = set()
    for cluster_id in sorted(result):
        if list(result.values()).count(result[cluster_id]) > 1 and result[cluster_id] in seen:
            result[cluster_id] = f"{result[cluster_id]} #{cluster_id}"
        seen.add(result[cluster_id])
    return result


# ---- profiles and migration ---------------------------------------------------------------------------

def segment_profiles(segments: "pd.DataFrame", buyers: "pd.DataFrame", mix: "pd.DataFrame | None",
                     labels: Mapping[int, str], centroids: Mapping[int, str]) -> "pd.DataFrame":
    """One row per cluster (kind 'cluster', by id) and per RFM segment present (kind 'rfm', in
    SEGMENT_RULES order): size, share, outliers, feature means, top categories, main channel and,
    for clusters, the centroid JSON the next run matches ids on."""
    import pandas as pd

    frame = buyers.assign(cluster_id=segments["cluster_id"].to_numpy(), rfm_segment=segments["rfm_segment"].to_numpy(),
                          is_outlier=segments["is_outlier"].to_numpy(dtype=bool))
    spend = _category_spend(mix, frame["customer_id"])
    top_categories = {"cluster": _top_categories(spend, frame["cluster_id"]), "rfm": _top_categories(spend, frame["rfm_segment"])}
    rows: list[dict[str, Any]] = []
    total = len(frame)
    groups = [("cluster", key, frame[frame["cluster_id"] == key]) for key in sorted(labels)]
    groups += [("rfm", name, frame[frame["rfm_segment"] == name]) for name in SEGMENT_NAMES if (frame["rfm_segment"] == name).any()]
    for kind, key, members in groups:
        means = members[["recency_days", "frequency", "monetary", "average_order_value", "items_per_order",
                         "discount_share", "return_rate", "tenure_days", "tickets_opened"]].mean()
        rows.append({
            "kind": kind,
            "segment": str(key),
            "cluster_id": int(key) if kind == "cluster" else None,
            "label": labels[key] if kind == "cluster" else str(key).replace("cant_", "can't ").replace("_", " "),
            "customers": int(len(members)),
            "share": round(len(members) / total, 6),
            "outliers": int(members["is_outlier"].sum()),
            **{f"mean_{name}": round(float(value), 4) for name, value in means.items()},
            "top_categories": top_categories[kind].get(key, ""),
            "main_channel": _main_channel(members),
            "centroid": centroids.get(key) if kind == "cluster" else None,
        })
    profiles = pd.DataFrame(rows, columns=list(PROFILE_COLUMNS))
    return typed_results(profiles, PROFILE_COLUMNS)


def _category_spend(mix: "pd.DataFrame | None", customer_ids: "pd.Series") -> tuple | None:
    """The mix rows of the scored customers as codes: each row's position in `customer_ids`, its
    category's code, the category names (sorted) and its net spend."""
    import numpy as np
    import pandas as pd

    if mix is None or mix.empty:
        return None
    position = _positions(mix["customer_id"], customer_ids)
    categories, names = pd.factorize(mix["category"].astype("str"), sort=True)
    kept = (position >= 0) & (categories >= 0)
    amount = float_values(mix["net_amount"])
    return position[kept], categories[kept], names, np.where(np.isnan(amount), 0.0, amount)[kept]


def _top_categories(spend: tuple | None, groups: "pd.Series", top: int = 3) -> dict[Any, str]:
    """Per value of `groups` (one per scored customer: a group of customers), e.g. 'grocery 41%,
    household 22%, beauty 9%': the shares of the group's net spend, largest first (ties by
    category). One pass over the spend rows for every group, on codes: filtering the rows group by
    group took 2.8 s at 100,000 customers, grouping on the text of the categories 7 s at a million."""
    import numpy as np
    import pandas as pd

    if spend is None:
        return {}
    customer, category, names, amount = spend
    group, keys = pd.factorize(groups, sort=True)
    row_group = group[customer]
    grouped = row_group >= 0
    cell, amount = (row_group * len(names) + category)[grouped], amount[grouped]
    sums = np.bincount(cell, weights=amount, minlength=len(keys) * len(names)).reshape(len(keys), len(names))
    tops: dict[Any, str] = {}
    for row, key in enumerate(keys):
        amounts = pd.Series(sums[row], index=names)[sums[row] > 0]
        if amounts.empty:
            continue
        shares = amounts / amounts.sum()
        ranked = sorted(shares.items(), key=lambda item: (-item[1], item[0]))[:top]
        tops[key] = ", ".join(f"{category} {share:.0%}" for category, share in ranked)
    return tops


def _main_channel(members: "pd.DataFrame") -> str | None:
    """The channel of most of the group's revenue orders."""
    orders = {channel: float((members[f"{channel}_share"].fillna(0) * members["frequency"]).sum()) for channel in CHANNELS}
    best = max(CHANNELS, key=lambda channel: orders[channel])
    return best if orders[best] > 0 else None


def segment_migration(segments: "pd.DataFrame", previous: "pd.DataFrame | None") -> "pd.DataFrame":
    """Customers per (kind, from, to) since the previous as-of date (see the module docstring)."""
    import numpy as np
    import pandas as pd

    if previous is None:
        return typed_results(pd.DataFrame(columns=list(MIGRATION_COLUMNS)), MIGRATION_COLUMNS)
    previous_date = None
    if "as_of_date" in previous.columns and previous["as_of_date"].notna().any():
        previous_date = pd.Timestamp(previous["as_of_date"].dropna().max())
    before = previous.assign(customer_id=previous["customer_id"].astype("str")).drop_duplicates("customer_id")
    # Each earlier customer's row among today's (-1: gone since), and which of today's were there.
    position = _positions(before["customer_id"], segments["customer_id"])
    rows: list[dict[str, Any]] = []
    for kind, column in (("rfm", "rfm_segment"), ("cluster", "cluster_id")):
        now = segments[column].astype("str").to_numpy(dtype=object)
        known = before[column].notna().to_numpy()
        then = before.loc[known, column].astype("object").map(lambda value: str(int(value)) if kind == "cluster" else str(value))
        then_position = position[known]
        still = then_position >= 0
        target = np.full(len(then_position), GONE, dtype=object)
        target[still] = now[then_position[still]]
        stayed = np.zeros(len(now), dtype=bool)
        stayed[then_position[still]] = True
        pairs = pd.DataFrame({
            "from_segment": np.concatenate([then.to_numpy(dtype=object), np.full(int((~stayed).sum()), NEW_CUSTOMER, dtype=object)]),
            "to_segment": np.concatenate([target, now[~stayed]]),
        })
        counts = pairs.groupby(["from_segment", "to_segment"]).size()
        for (source, target), customers in counts.items():
            rows.append({"kind": kind, "previous_as_of_date": previous_date, "from_segment": source,
                         "to_segment": target, "customers": int(customers)})
    frame = pd.DataFrame(rows, columns=list(MIGRATION_COLUMNS))
    frame = frame.sort_values(["kind", "from_segment", "to_segment"], kind="stable").reset_index(drop=True)
    return typed_results(frame, MIGRATION_COLUMNS)


def _migration_summary(migration: "pd.DataFrame") -> dict[str, dict[str, int]]:
    summary: dict[str, dict[str, int]] = {}
    for kind, rows in migration.groupby("kind"):
        stayed = rows["from_segment"] == rows["to_segment"]
        summary[str(kind)] = {
            "stayed": int(rows.loc[stayed, "customers"].sum()),
            "moved": int(rows.loc[~stayed & (rows["from_segment"] != NEW_CUSTOMER) & (rows["to_segment"] != GONE), "customers"].sum()),
            NEW_CUSTOMER: int(rows.loc[rows["from_segment"] == NEW_CUSTOMER, "customers"].sum()),
            GONE: int(rows.loc[rows["to_segment"] == GONE, "customers"].sum()),
        }
    return summary
