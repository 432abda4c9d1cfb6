"""Customer segments and clusters (ml_tasks/clustering.py) on hand-made customers: RFM rules worked
out by hand, k-means recovering planted groups, stable ids, migrations, outliers, determinism, and
outputs in the registry's declared columns."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.metrics import adjusted_rand_score

from ml_tasks import clustering, tasks
from ml_tasks.clustering import (
    CATEGORY_MIX, FEATURES, HOLDOUT_MIN_FOR_FLOOR, MIGRATION, PROFILES, SEGMENT_NAMES, SEGMENTS, SegmentSettings, fit, score, score_rfm,
    segment_migration,
    segment_of,
)
from ml_tasks.contract import BadParameter, InsufficientData
from ml_tasks.registry import model
from ml_tasks.warehouse_io import to_arrow
from warehouse import connect

AS_OF = dt.date(2025, 1, 31)
CATEGORIES = ("grocery", "household", "toys", "electronics", "home")

# Planted groups: (frequency, recency_days, average_order_value, items_per_order, discount_share,
# (web, store, phone) shares, {category: spend share}).
GROUPS = {
    "store_grocery": (20, 5, 60.0, 6.0, 0.02, (0.05, 0.9, 0.05), {"grocery": 0.7, "household": 0.3}),
    "discount_web": (8, 30, 40.0, 3.0, 0.5, (0.9, 0.05, 0.05), {"toys": 0.6, "grocery": 0.4}),
    "big_electronics": (3, 90, 300.0, 9.0, 0.03, (0.6, 0.3, 0.1), {"electronics": 0.6, "home": 0.4}),
    "lapsed_phone": (2, 300, 30.0, 2.0, 0.1, (0.1, 0.1, 0.8), {"household": 0.5, "home": 0.5}),
}


def _customers(sizes: dict[str, int], seed: int = 0, prefix: str = "c", shift: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Feature rows and category mix of customers drawn around the planted GROUPS (a small
    multiplicative noise; `shift` scales amounts and recency up by that share), and each
    customer's group."""
    rng = np.random.default_rng(seed)
    rows, mix, truth = [], [], {}
    number = 0
    for group, count in sizes.items():
        frequency, recency, value, items, discount, channels, categories = GROUPS[group]
        for _ in range(count):
            number += 1
            customer = f"{prefix}{number:05d}"
            noise = lambda: float(np.exp(rng.normal(0, 0.08)))  # noqa: E731
            orders = max(1, round(frequency * noise()))
            average = value * noise() * (1 + shift)
            channel = np.clip(np.array(channels) + rng.normal(0, 0.02, 3), 0, None)
            channel = channel / channel.sum()
            rows.append({
                "customer_id": customer, "as_of_date": pd.Timestamp(AS_OF), "tenure_days": 400,
                "frequency": orders, "monetary": round(orders * average, 2), "average_order_value": round(average, 2),
                "recency_days": round(recency * noise() * (1 + shift)), "frequency_last_90_days": orders // 4,
                "monetary_last_90_days": 0.0, "return_rate": 0.02, "favourite_channel": "web",
                "favourite_category": max(categories, key=categories.get), "favourite_category_share": 0.6,
                "distinct_categories": len(categories), "discount_share": float(np.clip(discount + rng.normal(0, 0.01), 0, 1)),
                "items_per_order": items * noise(), "web_share": channel[0], "store_share": channel[1], "phone_share": channel[2],
                "marketing_opt_in": True, "tickets_opened": 1, "open_tickets": 0, "unresolved_tickets": 0,
                "slow_reply_tickets": 0, "average_satisfaction": 4.0, "dissatisfied_tickets": 0, "interactions": 1,
                "complaint_interactions": 0, "campaigns_received": 2, "campaign_conversions": 0,
                "campaign_response_rate": 0.0, "is_crm_contact": True,
            })
            shares = {name: max(share + rng.normal(0, 0.02), 0.0) for name, share in categories.items()}
            total = sum(shares.values())
            for name, share in shares.items():
                mix.append({"customer_id": customer, "as_of_date": pd.Timestamp(AS_OF), "category": name,
                            "net_amount": round(orders * average * share / total, 2), "spend_share": share / total})
            truth[customer] = group
    return pd.DataFrame(rows), pd.DataFrame(mix), pd.Series(truth)


def _inputs(features: pd.DataFrame, mix: pd.DataFrame, previous: dict | None = None) -> dict:
    inputs = {FEATURES: features, CATEGORY_MIX: mix}
    for table, frame in (previous or {}).items():
        inputs[f"previous:{table}"] = frame
    return inputs


def run(inputs: dict, as_of: dt.date, settings: SegmentSettings) -> tuple[dict, dict]:
    """A day on which the segments are fitted, then scored (the task's metrics: both)."""
    fitted, fit_metrics = fit(inputs, as_of, settings)
    results, metrics = score(fitted, inputs, as_of, settings)
    return results, {**fit_metrics, **metrics}


def _stamped(results: dict, as_of: dt.date) -> dict:
    """Results as the runner reads them back the next day: stamped."""
    return {table: frame.assign(as_of_date=pd.Timestamp(as_of), run_id="run", model_version="v") for table, frame in results.items()}


BLOBS = {"store_grocery": 120, "discount_web": 90, "big_electronics": 70, "lapsed_phone": 60}
FOUR = SegmentSettings(k_min=4, k_max=4)


@pytest.fixture(scope="module")
def blob_run():
    features, mix, truth = _customers(BLOBS)
    results, metrics = run(_inputs(features, mix), AS_OF, FOUR)
    return features, mix, truth, results, metrics


# ---- RFM segments -----------------------------------------------------------------------------------

@pytest.mark.parametrize("scores, segment", [
    ((5, 5, 5), "champions"), ((4, 4, 4), "champions"), ((4, 5, 3), "champions"),
    ((3, 3, 3), "loyal"), ((5, 3, 3), "loyal"), ((1, 5, 5), "cant_lose"), ((1, 4, 4), "cant_lose"),
    ((2, 4, 3), "at_risk"), ((1, 3, 3), "at_risk"), ((5, 1, 1), "new"), ((5, 1, 3), "new"),
    ((4, 2, 2), "potential_loyalist"), ((5, 2, 2), "potential_loyalist"), ((4, 1, 1), "promising"),
    ((5, 2, 1), "promising"), ((3, 2, 2), "need_attention"), ((3, 1, 2), "about_to_sleep"),
    ((2, 2, 2), "hibernating"), ((2, 1, 1), "hibernating"), ((1, 2, 1), "lost"), ((1, 3, 2), "lost"),
])
def test_segment_rules_name_hand_worked_scores(scores, segment):
    r, f, m = scores
    assert segment_of(np.array([r]), np.array([f]), np.array([m]))[0] == segment


def test_every_score_triple_gets_a_segment_of_the_vocabulary_and_every_segment_is_reachable():
    triples = np.array([(r, f, m) for r in range(1, 6) for f in range(1, 6) for m in range(1, 6)])
    segments = segment_of(triples[:, 0], triples[:, 1], triples[:, 2])
    assert set(segments) == set(SEGMENT_NAMES)


# customer: recency_days, frequency, monetary, and the scores and segment worked out by hand
# (quintiles of 10 customers: ranks 1-2 score 1, ..., ranks 9-10 score 5; low recency is good).
HAND = {
    "alice": (1, 50, 9000.0, 5, 5, 5, "champions"),
    "bob": (2, 1, 20.0, 5, 1, 1, "new"),
    "carol": (400, 40, 5000.0, 1, 5, 5, "cant_lose"),
    "dave": (300, 2, 15.0, 1, 1, 1, "lost"),
    "erin": (5, 3, 60.0, 4, 2, 2, "potential_loyalist"),
    "frank": (250, 30, 3000.0, 2, 4, 4, "at_risk"),
    "grace": (10, 20, 1500.0, 4, 4, 4, "champions"),
    "heidi": (100, 4, 80.0, 2, 2, 2, "hibernating"),
    "ivan": (60, 10, 700.0, 3, 3, 3, "loyal"),
    "judy": (30, 5, 100.0, 3, 3, 3, "loyal"),
}


def _rfm(customers: dict) -> pd.DataFrame:
    return pd.DataFrame({
        "customer_id": list(customers),
        "recency_days": [float(values[0]) for values in customers.values()],
        "frequency": [float(values[1]) for values in customers.values()],
        "monetary": [float(values[2]) for values in customers.values()],
    })


def test_score_rfm_scores_hand_made_customers_as_worked_out_by_hand():
    scored = score_rfm(_rfm(HAND)).set_index("customer_id")
    for customer, (*_, r, f, m, segment) in HAND.items():
        assert tuple(scored.loc[customer, ["r_score", "f_score", "m_score"]]) == (r, f, m), customer
        assert scored.loc[customer, "rfm_segment"] == segment, customer


def test_score_rfm_does_not_depend_on_input_row_order_even_with_ties():
    tied = {**{key: values[:3] for key, values in HAND.items()}, "ken": (30, 5, 100.0), "liz": (30, 5, 100.0), "mo": (1, 50, 9000.0)}
    expected = score_rfm(_rfm(tied))
    for seed in range(5):
        shuffled = _rfm(tied).sample(frac=1, random_state=seed).reset_index(drop=True)
        pd.testing.assert_frame_equal(score_rfm(shuffled), expected)
    assert list(expected["customer_id"]) == sorted(tied)


# ---- clusters ---------------------------------------------------------------------------------------

def test_kmeans_recovers_well_separated_planted_groups_and_davies_bouldin_picks_their_number():
    features, mix, truth = _customers(BLOBS)
    results, metrics = run(_inputs(features, mix), AS_OF, SegmentSettings(k_min=2, k_max=7))
    segments = results[SEGMENTS].set_index("customer_id")
    assert metrics["k"] == 4
    assert min(metrics["davies_bouldin_by_k"], key=metrics["davies_bouldin_by_k"].get) == "4"
    assert set(metrics["davies_bouldin_by_k"]) == set(metrics["silhouette_by_k"]) == {str(k) for k in range(2, 8)}
    assert adjusted_rand_score(truth[segments.index], segments["cluster_id"]) >= 0.95


def test_kmeans_on_a_sample_of_the_training_customers_still_finds_the_planted_groups_for_everyone():
    sizes = {group: count * 5 for group, count in BLOBS.items()}  # 1,700 customers, 1,360 training ones
    features, mix, truth = _customers(sizes)
    results, metrics = run(_inputs(features, mix), AS_OF, SegmentSettings(k_min=4, k_max=4, fit_sample_size=1_000))
    segments = results[SEGMENTS].set_index("customer_id")
    assert metrics["train_customers"] == 1_000
    assert len(segments) == len(features) and segments["cluster_id"].notna().all()
    assert adjusted_rand_score(truth[segments.index], segments["cluster_id"]) >= 0.95


def test_default_settings_try_k_4_to_8_and_take_the_lowest_davies_bouldin():
    features, mix, truth = _customers(BLOBS)
    settings = SegmentSettings()
    assert (settings.k_min, settings.k_max) == (4, 8)
    results, metrics = run(_inputs(features, mix), AS_OF, settings)
    by_k = metrics["davies_bouldin_by_k"]
    assert list(by_k) == ["4", "5", "6", "7", "8"]
    assert metrics["k"] == int(min(by_k, key=by_k.get)) == 4
    segments = results[SEGMENTS].set_index("customer_id")
    assert adjusted_rand_score(truth[segments.index], segments["cluster_id"]) >= 0.95


def test_cluster_labels_describe_the_planted_groups_and_are_unique(blob_run):
    _, _, truth, results, _ = blob_run
    segments = results[SEGMENTS].set_index("customer_id")
    label = {group: segments.loc[truth[truth == group].index, "cluster_label"].mode()[0] for group in BLOBS}
    assert len(set(label.values())) == 4
    assert {"store", "grocery"} <= set(label["store_grocery"].split()), label
    assert {"discount-driven", "web"} <= set(label["discount_web"].split()), label
    assert "electronics" in label["big_electronics"].split() and "big-basket" in label["big_electronics"].split(), label
    assert {"lapsed", "phone"} <= set(label["lapsed_phone"].split()), label
    profiles = results[PROFILES]
    clusters = profiles[profiles["kind"] == "cluster"]
    assert clusters["label"].is_unique
    assert sorted(clusters["cluster_id"]) == [1, 2, 3, 4]


def test_first_run_numbers_clusters_by_decreasing_size(blob_run):
    _, _, truth, results, metrics = blob_run
    segments = results[SEGMENTS].set_index("customer_id")
    ids = {group: segments.loc[truth[truth == group].index, "cluster_id"].mode()[0] for group in BLOBS}
    assert ids == {"store_grocery": 1, "discount_web": 2, "big_electronics": 3, "lapsed_phone": 4}
    assert metrics["cluster_sizes"] == {"1": 120, "2": 90, "3": 70, "4": 60}
    assert metrics["clusters_matched"] == 0 and metrics["clusters_new"] == 4


def test_cluster_ids_follow_the_centroids_to_the_next_run_when_data_shift_and_sizes_reorder(blob_run):
    _, _, truth, first, _ = blob_run
    before = first[SEGMENTS].set_index("customer_id")
    first_ids = {group: before.loc[truth[truth == group].index, "cluster_id"].mode()[0] for group in BLOBS}
    # Next month: other customers, amounts and recency 15% up, group sizes in the reverse order,
    # another seed for k-means (its internal cluster order differs).
    sizes = {"lapsed_phone": 130, "big_electronics": 100, "discount_web": 80, "store_grocery": 50}
    features, mix, truth2 = _customers(sizes, seed=5, prefix="d", shift=0.15)
    settings = SegmentSettings(k_min=4, k_max=4, random_state=7)
    results, metrics = run(_inputs(features, mix, _stamped(first, AS_OF)), AS_OF + dt.timedelta(days=30), settings)
    after = results[SEGMENTS].set_index("customer_id")
    ids = {group: after.loc[truth2[truth2 == group].index, "cluster_id"].mode()[0] for group in BLOBS}
    assert ids == first_ids
    assert metrics["clusters_matched"] == 4 and metrics["clusters_new"] == 0


def test_a_cluster_without_a_previous_match_gets_a_new_id_above_the_previous_highest(blob_run):
    _, _, truth, first, _ = blob_run
    three = {"store_grocery": 120, "discount_web": 90, "big_electronics": 70}
    features, mix, truth3 = _customers(three, seed=2)
    second, _ = run(_inputs(features, mix, _stamped(first, AS_OF)), AS_OF + dt.timedelta(days=1), SegmentSettings(k_min=3, k_max=3))
    # The third run finds the lapsed phone buyers again: their id (4) was retired by the second run.
    features, mix, truth4 = _customers(BLOBS, seed=3)
    third, metrics = run(_inputs(features, mix, _stamped(second, AS_OF + dt.timedelta(days=1))), AS_OF + dt.timedelta(days=2), FOUR)
    segments = third[SEGMENTS].set_index("customer_id")
    ids = {group: segments.loc[truth4[truth4 == group].index, "cluster_id"].mode()[0] for group in BLOBS}
    assert ids == {"store_grocery": 1, "discount_web": 2, "big_electronics": 3, "lapsed_phone": 4}
    assert metrics["clusters_matched"] == 3 and metrics["clusters_new"] == 1
    assert metrics["cluster_sizes"]["4"] == 60


def test_a_previous_centroid_too_far_away_does_not_pass_its_id_on(blob_run):
    _, _, _, first, _ = blob_run
    features, mix, _ = _customers(BLOBS, seed=4)
    settings = SegmentSettings(k_min=4, k_max=4, id_match_max_distance=0.0)
    results, metrics = run(_inputs(features, mix, _stamped(first, AS_OF)), AS_OF + dt.timedelta(days=1), settings)
    assert sorted(results[SEGMENTS]["cluster_id"].unique()) == [5, 6, 7, 8]
    assert metrics["clusters_matched"] == 0


def test_profiles_hold_one_row_per_cluster_and_per_rfm_segment_with_shares_summing_to_one(blob_run):
    features, _, _, results, _ = blob_run
    profiles = results[PROFILES]
    segments = results[SEGMENTS]
    for kind in ("cluster", "rfm"):
        rows = profiles[profiles["kind"] == kind]
        assert rows["customers"].sum() == len(features)
        assert rows["share"].sum() == pytest.approx(1.0, abs=1e-5)
    rfm = profiles[profiles["kind"] == "rfm"].set_index("segment")
    assert rfm["customers"].to_dict() == segments["rfm_segment"].value_counts().to_dict()
    assert rfm["centroid"].isna().all() and rfm["cluster_id"].isna().all()
    grocery = profiles[(profiles["kind"] == "cluster") & (profiles["cluster_id"] == 1)].iloc[0]
    assert grocery["main_channel"] == "store"
    assert grocery["top_categories"].startswith("grocery 7")  # about 70% of the group's spend
    assert set(json.loads(grocery["centroid"])) == set(clustering.CLUSTER_FEATURES) | {f"category:{c}" for c in CATEGORIES}


# ---- outliers ---------------------------------------------------------------------------------------

def test_far_away_customers_are_flagged_as_outliers_and_almost_no_one_else():
    features, mix, _ = _customers(BLOBS)
    far = features.iloc[:3].copy()
    far["customer_id"] = ["zz1", "zz2", "zz3"]
    far["frequency"] = [400, 2, 900]
    far["monetary"] = [9e6, 5e5, 1e5]
    far["average_order_value"] = far["monetary"] / far["frequency"]
    far["items_per_order"] = [80.0, 150.0, 1.0]
    far["tickets_opened"] = [60, 0, 90]
    far["complaint_interactions"] = [40, 50, 0]
    results, metrics = run(_inputs(pd.concat([features, far], ignore_index=True), mix), AS_OF, FOUR)
    flagged = set(results[SEGMENTS].loc[results[SEGMENTS]["is_outlier"], "customer_id"])
    assert {"zz1", "zz2", "zz3"} <= flagged
    assert len(flagged) <= 3 + 0.02 * len(features)
    assert metrics["outliers"] == len(flagged)
    assert results[SEGMENTS]["cluster_id"].notna().all()  # outliers keep their nearest cluster


# ---- migration --------------------------------------------------------------------------------------

def _segments(rows: dict[str, tuple[str, int]]) -> pd.DataFrame:
    return pd.DataFrame({
        "customer_id": list(rows),
        "rfm_segment": [value[0] for value in rows.values()],
        "cluster_id": pd.array([value[1] for value in rows.values()], dtype="Int64"),
    })


def test_migration_counts_moves_stays_newcomers_and_leavers_worked_out_by_hand():
    previous = _segments({"a": ("champions", 1), "b": ("champions", 1), "c": ("loyal", 2), "d": ("lost", 3)})
    previous["as_of_date"] = pd.Timestamp(AS_OF)
    current = _segments({"a": ("champions", 1), "b": ("loyal", 2), "c": ("loyal", 1), "e": ("new", 2)})
    migration = segment_migration(current, previous)
    got = {(row.kind, row.from_segment, row.to_segment): row.customers for row in migration.itertuples()}
    assert got == {
        ("rfm", "champions", "champions"): 1,
        ("rfm", "champions", "loyal"): 1,
        ("rfm", "loyal", "loyal"): 1,
        ("rfm", "lost", "gone"): 1,
        ("rfm", "new_customer", "new"): 1,
        ("cluster", "1", "1"): 1,
        ("cluster", "1", "2"): 1,
        ("cluster", "2", "1"): 1,
        ("cluster", "3", "gone"): 1,
        ("cluster", "new_customer", "2"): 1,
    }
    assert (migration["previous_as_of_date"] == pd.Timestamp(AS_OF)).all()
    assert list(migration.columns) == list(clustering.MIGRATION_COLUMNS)


def test_run_reports_migrations_since_the_previous_run_and_none_on_the_first(blob_run):
    features, mix, _, first, metrics = blob_run
    assert first[MIGRATION].empty and metrics["migration"] == {}
    later = features.iloc[10:]  # ten customers gone
    newcomers = features.iloc[:4].assign(customer_id=["n1", "n2", "n3", "n4"])
    results, metrics = run(_inputs(pd.concat([later, newcomers]), mix, _stamped(first, AS_OF)), AS_OF + dt.timedelta(days=7), FOUR)
    migration = results[MIGRATION]
    for kind in ("rfm", "cluster"):
        rows = migration[migration["kind"] == kind]
        assert rows.loc[rows["to_segment"] == "gone", "customers"].sum() == 10
        assert rows.loc[rows["from_segment"] == "new_customer", "customers"].sum() == 4
        assert rows["customers"].sum() == len(features) + 4
        assert metrics["migration"][kind]["gone"] == 10 and metrics["migration"][kind]["new_customer"] == 4
    clusters = migration[(migration["kind"] == "cluster") & (migration["from_segment"] != "new_customer") & (migration["to_segment"] != "gone")]
    assert clusters.loc[clusters["from_segment"] == clusters["to_segment"], "customers"].sum() == len(features) - 10


# ---- determinism, inputs, settings, outputs --------------------------------------------------------

def test_same_inputs_give_equal_outputs_and_metrics(blob_run):
    features, mix, _, results, metrics = blob_run
    again, again_metrics = run(_inputs(features.copy(), mix.copy()), AS_OF, FOUR)
    for table in results:
        pd.testing.assert_frame_equal(again[table], results[table])
    assert again_metrics == metrics


def test_input_row_order_does_not_change_the_results(blob_run):
    features, mix, _, results, metrics = blob_run
    shuffled, shuffled_metrics = run(
        _inputs(features.sample(frac=1, random_state=3), mix.sample(frac=1, random_state=4)), AS_OF, FOUR)
    for table in results:
        pd.testing.assert_frame_equal(shuffled[table], results[table])
    assert shuffled_metrics == metrics


def test_customers_without_a_revenue_order_are_not_scored(blob_run):
    features, mix, _, results, metrics = blob_run
    browsers = features.iloc[:5].assign(customer_id=[f"b{i}" for i in range(5)], frequency=0, monetary=0.0, recency_days=None)
    again, again_metrics = run(_inputs(pd.concat([features, browsers]), mix), AS_OF, FOUR)
    pd.testing.assert_frame_equal(again[SEGMENTS], results[SEGMENTS])
    assert again_metrics["customers_known"] == len(features) + 5 and again_metrics["customers_scored"] == len(features)


def test_too_few_buyers_raise_insufficient_data_naming_the_count():
    features, mix, _ = _customers({"store_grocery": 79})
    browsers = pd.concat([features.assign(customer_id=features["customer_id"] + suffix, frequency=0) for suffix in "xy"])
    with pytest.raises(InsufficientData, match=r"^79 customers with a revenue order on 2025-01-31, expected at least 80"):
        run(_inputs(pd.concat([features, browsers]), mix), AS_OF, SegmentSettings())


@pytest.mark.parametrize("field, value", [
    ("k_min", 1), ("k_max", 51), ("k_min", 2.5), ("n_init", 0), ("random_state", -1), ("holdout_share", 0.9),
    ("outlier_density_quantile", 0.2), ("outlier_sample_size", 10), ("share_prior_orders", -1.0), ("min_customers", True),
])
def test_settings_out_of_range_raise_bad_parameter_naming_the_field(field, value):
    with pytest.raises(BadParameter, match=rf"^{field}: got {value!r}, expected"):
        SegmentSettings(**{field: value})


def test_k_max_below_k_min_raises_bad_parameter_naming_k_max():
    with pytest.raises(BadParameter, match=r"^k_max: got 4, expected at least k_min \(5\)"):
        SegmentSettings(k_min=5, k_max=4)


def test_outputs_have_exactly_the_declared_columns_of_the_registry_spec_and_fit_their_types(blob_run):
    features, mix, _, first, _ = blob_run
    spec = model("customer_segments")
    results, _ = run(_inputs(features, mix, _stamped(first, AS_OF)), AS_OF + dt.timedelta(days=1), FOUR)
    assert set(results) == {table.name for table in spec.writes}
    stamps = {"as_of_date": AS_OF, "run_id": "run", "model_version": spec.version}
    for table in spec.writes:
        assert list(results[table.name].columns) == list(table.columns), table.name
        assert not results[table.name].empty
        arrow = to_arrow(table, results[table.name], stamps)  # raises when a value does not fit its type
        assert arrow.num_rows == len(results[table.name])
    assert spec.settings is SegmentSettings and set(spec.reads_previous) == {SEGMENTS, PROFILES}


def test_metrics_are_json_and_hold_the_quality_floors_of_the_spec(blob_run):
    *_, metrics = blob_run
    spec = model("customer_segments")
    json.dumps(metrics)
    assert set(spec.quality_floors) == {"judged_silhouette_gain"}
    # Clear blobs gain well over one Gaussian; too few are held out for the floor to judge them.
    assert metrics["heldout_silhouette_gain"] >= spec.quality_floors["judged_silhouette_gain"]
    assert metrics["heldout_customers"] == round(0.2 * len(blob_run[0])) < HOLDOUT_MIN_FOR_FLOOR
    assert metrics["judged_silhouette_gain"] is None and "not judged" in metrics["quality_note"]
    assert sum(metrics["segment_share"].values()) == pytest.approx(1.0, abs=1e-5)


def test_quality_floors_reject_customers_without_any_cluster_structure():
    """Independent uniform noise in every feature (3,000 customers: 600 held out, enough to judge):
    k-means still splits it, but its held-out
    silhouette gains no more over one Gaussian with the same covariance than the spec's floor
    allows (0.027 at the k = 8 Davies-Bouldin picks; 0.016-0.039 at each k of 4-8)."""
    rng = np.random.default_rng(0)
    features, mix, _ = _customers({"store_grocery": 3000})
    count = len(features)
    features = features.assign(
        frequency=rng.integers(1, 30, count), recency_days=rng.integers(0, 365, count),
        average_order_value=rng.uniform(10, 300, count), items_per_order=rng.uniform(1, 10, count),
        discount_share=rng.uniform(0, 0.5, count), tenure_days=rng.integers(30, 700, count),
        tickets_opened=rng.integers(0, 5, count), campaign_response_rate=rng.uniform(0, 1, count),
        web_share=rng.uniform(0, 1, count), return_rate=rng.uniform(0, 0.2, count),
        complaint_interactions=rng.integers(0, 3, count),
    )
    features["monetary"] = features["frequency"] * features["average_order_value"]
    features["store_share"] = 1 - features["web_share"]
    features["phone_share"] = 0.0
    mix = mix.assign(spend_share=rng.uniform(0, 1, len(mix)))
    _, metrics = run(_inputs(features, mix), AS_OF, SegmentSettings())
    floors = model("customer_segments").quality_floors
    assert all(metrics[name] < floor for name, floor in floors.items()), metrics
    for k in range(4, 9):
        _, metrics = run(_inputs(features, mix), AS_OF, SegmentSettings(k_min=k, k_max=k))
        for name, floor in floors.items():
            assert metrics[name] < floor, (k, name, metrics[name])


# ---- a stored fit, later days -------------------------------------------------------------------------

def test_a_later_day_is_scored_with_the_fit_its_centroids_ids_and_columns(blob_run):
    features, mix, truth, first, _ = blob_run
    fitted, _ = fit(_inputs(features, mix), AS_OF, FOUR)
    # A week later: the same customers a week less recent, one of them now buying garden tools (a
    # category the fit never saw) and no one buying toys any more (one it did).
    later = features.assign(recency_days=features["recency_days"] + 7)
    later_mix = mix[mix["category"] != "toys"]
    later_mix = pd.concat([later_mix, pd.DataFrame([{"customer_id": "c00001", "as_of_date": pd.Timestamp(AS_OF),
                                                     "category": "garden", "net_amount": 5.0, "spend_share": 0.1}])])
    results, metrics = score(fitted, _inputs(later, later_mix, _stamped(first, AS_OF)), AS_OF + dt.timedelta(days=7), FOUR)
    segments = results[SEGMENTS].set_index("customer_id")
    before = first[SEGMENTS].set_index("customer_id")
    # The fit's centroids: every id matched, the planted groups where they were.
    assert metrics["clusters_matched"] == 4 and metrics["clusters_new"] == 0
    assert adjusted_rand_score(truth[segments.index], segments["cluster_id"]) == 1.0
    assert (segments["cluster_id"] == before.loc[segments.index, "cluster_id"]).mean() >= 0.99
    profiles = results[PROFILES]
    centroids = profiles.loc[profiles["kind"] == "cluster", "centroid"].map(json.loads)
    assert all(set(centroid) == set(fitted.fill.columns) for centroid in centroids)
    assert "category:garden" not in fitted.fill.columns and "category:toys" in fitted.fill.columns
    # A week's recency moves that feature's distribution off the fit's; the rest stay put.
    assert set(metrics["drift_psi"]) == {"distance_to_centroid", "recency", "frequency", "monetary"}
    assert metrics["drift_psi"]["frequency"] == 0.0 and metrics["drift_psi"]["recency"] > 0


def _load(url: str, table: str, frame: pd.DataFrame) -> None:
    types = {"customer_id": "string", "as_of_date": "date"}
    for column, dtype in frame.dtypes.items():
        if column not in types:
            types[column] = ("boolean" if pd.api.types.is_bool_dtype(dtype) else "integer" if pd.api.types.is_integer_dtype(dtype)
                             else "double" if pd.api.types.is_float_dtype(dtype) else "string")
    with connect(url) as warehouse:
        warehouse.ensure_table(table, types)
        warehouse.execute(f"delete from {table}")
        warehouse.append_arrow(table, pa.Table.from_pandas(frame.loc[:, list(types)], preserve_index=False))


def test_the_task_reuses_a_fit_for_later_days_while_the_customers_hold_and_refits_when_they_move(warehouse_url):
    features, mix, _ = _customers(BLOBS)
    params = {"customer_segments": {"k_min": 4, "k_max": 4}}

    def day(offset: int, frame: pd.DataFrame, categories: pd.DataFrame) -> dict:
        as_of = AS_OF + dt.timedelta(days=offset)
        _load(warehouse_url, FEATURES, frame.assign(as_of_date=pd.Timestamp(as_of)))
        _load(warehouse_url, CATEGORY_MIX, categories.assign(as_of_date=pd.Timestamp(as_of)))
        return tasks.run_model("customer_segments", as_of, f"day-{offset}", params, warehouse_url)

    first = day(0, features, mix)
    assert first["status"] == "published" and first["metrics"]["refitted"]
    second = day(1, features.assign(recency_days=features["recency_days"] + 1), mix)
    assert not second["metrics"]["refitted"] and second["metrics"]["model_age_days"] == 1
    assert second["metrics"]["k"] == 4 and second["metrics"]["clusters_matched"] == 4  # the fit's metrics travel with it
    with connect(warehouse_url) as warehouse:
        changed = warehouse.fetchall(
            "select count(*) from ml.customer_segments today join ml.customer_segments yesterday"
            " on today.customer_id = yesterday.customer_id and yesterday.as_of_date = ?"
            " where today.as_of_date = ? and today.cluster_id <> yesterday.cluster_id",
            (AS_OF, AS_OF + dt.timedelta(days=1)),
        )
        assert changed == [(0,)]
        assert warehouse.fetchall("select count(*) from ml.trained_models where model_name = 'customer_segments'") == [(1,)]
        # The second day's migration, read against the first day's published segments, counts every
        # customer of those, by segment.
        assert warehouse.fetchall(
            "select cast(previous_as_of_date as varchar), sum(customers) from ml.segment_migration"
            " where as_of_date = ? and kind = 'rfm' and from_segment <> 'new_customer' group by 1",
            (AS_OF + dt.timedelta(days=1),),
        ) == warehouse.fetchall(
            "select cast(as_of_date as varchar), count(*) from ml.customer_segments where as_of_date = ? group by 1", (AS_OF,)
        )
    # Half as many customers again (newcomers): more than 1% moved, so the segments are fitted again.
    newcomers, newcomer_mix, _ = _customers({"store_grocery": 60, "discount_web": 45, "big_electronics": 35,
                                             "lapsed_phone": 30}, seed=9, prefix="n")
    third = day(2, pd.concat([features, newcomers], ignore_index=True), pd.concat([mix, newcomer_mix], ignore_index=True))
    assert third["metrics"]["refitted"] and "an aggregate moved" in third["metrics"]["refit_reason"]
    assert third["metrics"]["clusters_matched"] == 4


def test_the_registry_imports_neither_pandas_nor_scikit_learn():
    code = "import sys, ml_tasks.registry; print(sorted({'pandas', 'sklearn', 'scipy'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
