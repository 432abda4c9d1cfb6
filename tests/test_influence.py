"""Referral influence (ml_tasks/influence.py) on a hand-built network whose every figure is known:

    a ─► b ─► d ─► e        f ─► g        x ◄──► y ─► z        p ─► q ─► r ─► t ─► u
    └──► c                                                      ▲         │
                                                                └─────────┘
plus rows the cleaning must drop: s referred by itself (a self-merge), b's referral listed twice,
and c also named as referred by f, later than by a. z has no feature row.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from ml_tasks import influence
from ml_tasks.contract import PANDAS_DTYPES, BadParameter, InsufficientData

AS_OF = dt.date(2025, 6, 30)
ALPHA = 0.85

REFERRALS = [  # customer, referred by, referral date
    ("b", "a", "2025-01-02"), ("c", "a", "2025-01-03"), ("d", "b", "2025-02-01"), ("e", "d", "2025-03-01"),
    ("g", "f", "2025-01-05"),
    ("y", "x", "2025-01-10"), ("x", "y", "2025-01-11"), ("z", "y", "2025-01-12"),
    ("q", "p", "2025-02-10"), ("r", "q", "2025-02-11"), ("p", "r", "2025-02-12"), ("t", "r", "2025-02-13"), ("u", "t", "2025-02-14"),
    ("s", "s", "2025-01-01"),  # two contacts of one person merged: no referral
    ("b", "a", "2025-01-02"),  # listed twice
    ("c", "f", "2025-04-01"),  # c's merged contacts name two referrers: a's is the earlier referral
]
MONETARY = {"a": 10.0, "b": 20.0, "c": 30.0, "d": 40.0, "e": 50.0, "f": 60.0, "g": 70.0, "x": 1.0, "y": 2.0,
            "p": 100.0, "q": 200.0, "r": 300.0, "t": 400.0, "u": 500.0, "s": 7.0, "n": 9.0}

# customer -> (referred_by, direct referrals, tree size, tree revenue, depth)
EXPECTED = {
    "a": (None, 2, 4, 140.0, 3),
    "b": ("a", 1, 2, 90.0, 2),
    "c": ("a", 0, 0, 0.0, 0),
    "d": ("b", 1, 1, 50.0, 1),
    "e": ("d", 0, 0, 0.0, 0),
    "f": (None, 1, 1, 70.0, 1),
    "g": ("f", 0, 0, 0.0, 0),
    # A two-member cycle: each reaches the other; y also reaches z (no feature row: no revenue).
    "x": ("y", 1, 2, 2.0, 2),
    "y": ("x", 2, 2, 1.0, 1),
    "z": ("y", 0, 0, 0.0, 0),
    # A three-member cycle with a chain below r: every member reaches the other four.
    "p": ("r", 1, 4, 1400.0, 4),
    "q": ("p", 1, 4, 1300.0, 3),
    "r": ("q", 2, 4, 1200.0, 2),
    "t": ("r", 1, 1, 500.0, 1),
    "u": ("t", 0, 0, 0.0, 0),
}


def _inputs(referrals=REFERRALS, monetary=MONETARY) -> dict[str, pd.DataFrame]:
    edges = pd.DataFrame(referrals, columns=["customer_id", "referred_by_customer_id", "referral_date"])
    edges["referral_date"] = pd.to_datetime(edges["referral_date"])
    features = pd.DataFrame({"customer_id": list(monetary), "monetary": list(monetary.values()), "frequency": 1})
    return {influence.REFERRALS: edges, influence.FEATURES: features}


def _run(settings: influence.InfluenceSettings | None = None, inputs=None):
    results, metrics = influence.run(inputs or _inputs(), AS_OF, settings or influence.InfluenceSettings(pagerank_alpha=ALPHA))
    return results[influence.INFLUENCE].set_index("customer_id"), metrics


def test_tree_sizes_revenues_and_depths_are_counted_through_trees_and_cycles():
    table, _ = _run()
    assert sorted(table.index) == sorted(EXPECTED)  # s (self-referral only) is in no network
    for customer, (referred_by, direct, size, revenue, depth) in EXPECTED.items():
        row = table.loc[customer]
        got = (None if pd.isna(row["referred_by_customer_id"]) else row["referred_by_customer_id"],
               row["direct_referrals"], row["referral_tree_size"], row["referral_tree_revenue"], row["referral_depth"])
        assert got == (referred_by, direct, size, revenue, depth), customer


def test_tree_figures_match_networkx_descendants_on_a_random_network_with_cycles():
    import networkx as nx
    import numpy as np

    rng = np.random.default_rng(5)
    customers = [f"c{number:04d}" for number in range(600)]
    referred = rng.choice(600, 560, replace=False)
    referrers = rng.integers(0, 600, 560)  # anyone: cycles (here of 2, 2 and 15) and long chains occur
    referrals = [(customers[r], customers[by], "2025-01-01") for r, by in zip(referred, referrers)]
    monetary = {customer: float(amount) for customer, amount in zip(customers, rng.integers(0, 1000, 600))}
    table, metrics = _run(inputs=_inputs(referrals=referrals, monetary=monetary))
    graph = nx.DiGraph((by, customer) for customer, by in zip(table.index, table["referred_by_customer_id"]) if not pd.isna(by))
    assert (metrics["cycles"], metrics["customers_in_cycles"]) == (3, 19)
    for customer in graph:
        below = nx.descendants(graph, customer)
        row = table.loc[customer]
        assert row["referral_tree_size"] == len(below), customer
        assert row["referral_tree_revenue"] == pytest.approx(sum(monetary[other] for other in below)), customer
        # The customer itself is at distance 0: the largest distance is the deepest descendant's.
        assert row["referral_depth"] == max(nx.single_source_shortest_path_length(graph, customer).values()), customer


def test_pagerank_counts_each_tree_level_alpha_times_the_level_above():
    table, _ = _run()
    pagerank = table["pagerank"]
    assert pagerank.sum() == pytest.approx(1.0, abs=1e-9)
    # A customer with no referrals holds the base share; a referrer adds alpha^level per descendant.
    base = pagerank["c"]
    assert pagerank[["e", "g", "z", "u"]].tolist() == pytest.approx([base] * 4, rel=1e-7)
    assert pagerank["d"] / base == pytest.approx(1 + ALPHA, rel=1e-7)
    assert pagerank["b"] / base == pytest.approx(1 + ALPHA + ALPHA**2, rel=1e-7)
    assert pagerank["a"] / base == pytest.approx(1 + 2 * ALPHA + ALPHA**2 + ALPHA**3, rel=1e-7)
    order = pagerank.sort_values(ascending=False).index.tolist()
    assert order.index("a") < order.index("b") < order.index("d") < order.index("e")


def test_influence_score_is_direct_referrals_and_equal_scores_share_a_rank():
    table, metrics = _run()
    assert (table["influence_score"] == table["direct_referrals"].astype(float)).all()
    assert table.loc[["a", "y", "r"], "influence_rank"].tolist() == [1, 1, 1]
    assert table.loc[["b", "d", "f", "x", "p", "q", "t"], "influence_rank"].tolist() == [4] * 7
    assert set(table.loc[table["direct_referrals"] == 0, "influence_rank"]) == {11}
    # One top influencer (1% of 10 referrers, at least one): of a, y and r (two referrals each),
    # a and r have the larger trees (4), and r the larger pagerank (its cycle hands rank round).
    assert table.index[table["is_top_influencer"]].tolist() == ["r"]
    assert metrics["top_influencers"] == 1
    assert metrics["top_influencers_referral_share"] == pytest.approx(2 / 13)


def test_indirect_referral_weight_and_top_n_change_score_and_flags():
    table, _ = _run(influence.InfluenceSettings(indirect_referral_weight=0.5, top_n=3))
    assert table.loc["a", "influence_score"] == 2 + 0.5 * (4 - 2)
    assert table.loc["p", "influence_score"] == 1 + 0.5 * (4 - 1)
    assert table.loc[["a", "r", "p", "q", "y"], "influence_rank"].tolist() == [1, 1, 3, 3, 5]
    # p and q tie on score and tree size: q, nearer r on the cycle, has the larger pagerank.
    assert table.index[table["is_top_influencer"]].tolist() == ["a", "q", "r"]


def test_cleaning_drops_self_merges_duplicates_and_later_referrers():
    table, metrics = _run()
    assert "s" not in table.index
    assert table.loc["c", "referred_by_customer_id"] == "a"
    assert table.loc["f", "direct_referrals"] == 1
    assert {key: metrics[key] for key in ("input_rows", "self_referrals_dropped", "duplicate_referrals_dropped",
                                          "customers_with_several_referrers", "later_referrals_dropped", "edges")} == {
        "input_rows": 16, "self_referrals_dropped": 1, "duplicate_referrals_dropped": 1,
        "customers_with_several_referrers": 1, "later_referrals_dropped": 1, "edges": 13,
    }
    assert {key: metrics[key] for key in ("network_customers", "referrers", "trees", "largest_tree", "deepest_tree",
                                          "cycles", "customers_in_cycles", "customers_without_features")} == {
        "network_customers": 15, "referrers": 10, "trees": 4, "largest_tree": 4, "deepest_tree": 4,
        "cycles": 2, "customers_in_cycles": 5, "customers_without_features": 1,
    }


def test_a_customer_named_by_several_referrers_keeps_the_earliest_then_the_smallest_id():
    inputs = _inputs(referrals=[("k", "m", "2025-01-01"), ("k", "h", "2025-02-01"), ("h", "m", "2025-01-01")])
    table, _ = _run(inputs=inputs)
    assert table.loc["k", "referred_by_customer_id"] == "m"
    assert table["direct_referrals"].to_dict() == {"h": 0, "k": 0, "m": 2}
    inputs[influence.REFERRALS] = inputs[influence.REFERRALS].drop(columns="referral_date")
    table, _ = _run(inputs=inputs)
    assert table.loc["k", "referred_by_customer_id"] == "h"
    assert table["referral_tree_size"].to_dict() == {"h": 1, "k": 0, "m": 2}


def test_same_rows_in_another_order_give_the_same_results():
    table, metrics = _run()
    shuffled = {name: frame.sample(frac=1.0, random_state=7) for name, frame in _inputs().items()}
    again, metrics_again = _run(inputs=shuffled)
    pd.testing.assert_frame_equal(table, again)
    assert metrics == metrics_again


def test_output_has_the_declared_columns_and_types():
    results, _ = influence.run(_inputs(), AS_OF, influence.InfluenceSettings())
    table = results[influence.INFLUENCE]
    assert list(results) == [influence.INFLUENCE]
    assert list(table.columns) == list(influence.INFLUENCE_COLUMNS)
    assert {column: str(dtype) for column, dtype in table.dtypes.items()} == {
        column: PANDAS_DTYPES[kind] for column, kind in influence.INFLUENCE_COLUMNS.items()}
    assert table["customer_id"].is_monotonic_increasing


@pytest.mark.parametrize("referrals", [[], [("s", "s", "2025-01-01")]], ids=["no rows", "only a self-merge"])
def test_no_referral_between_two_customers_is_insufficient_data(referrals):
    with pytest.raises(InsufficientData, match=f"{influence.REFERRALS}: 0 referrals"):
        influence.run(_inputs(referrals=referrals), AS_OF, influence.InfluenceSettings())


def test_bad_inputs_and_settings_name_what_was_expected():
    inputs = _inputs()
    inputs[influence.FEATURES] = inputs[influence.FEATURES].drop(columns="monetary")
    with pytest.raises(ValueError, match=f"{influence.FEATURES}: missing column 'monetary'"):
        influence.run(inputs, AS_OF, influence.InfluenceSettings())
    with pytest.raises(BadParameter, match="pagerank_alpha: got 1.5"):
        influence.InfluenceSettings(pagerank_alpha=1.5)
    with pytest.raises(BadParameter, match="top_n: got -1"):
        influence.InfluenceSettings(top_n=-1)
