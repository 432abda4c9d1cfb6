"""Association mining (ml_tasks/association.py): exact itemsets and rule numbers (against hand
counts, an independent count and mlxtend), pruning, next-best offers, the model's contract."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ml_tasks import association, registry, tasks, warehouse_io
from ml_tasks.association import (
    RULE_COLUMNS,
    AssociationSettings,
    frequent_itemsets,
    mine_rules,
    next_best_offers,
)
from ml_tasks.contract import BadParameter, InsufficientData, build_settings
from warehouse import connect

WEKA = Path(__file__).resolve().parents[2] / "shared" / "data" / "weka_supermarket" / "supermarket.arff"
AS_OF = dt.date(2025, 6, 30)


def long_form(baskets: dict[int, list[str]]) -> pd.DataFrame:
    return pd.DataFrame([(basket, item) for basket, items in baskets.items() for item in items], columns=["basket_id", "item"])


def random_baskets(seed: int, baskets: int = 400, items: int = 25) -> dict[int, list[str]]:
    """Sparse baskets over skewed item popularity, with two groups bought together."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    result = {}
    for basket in range(baskets):
        size = 1 + rng.poisson(2.5)
        chosen = set(rng.choice(items, size=min(size, items), replace=False, p=popularity / popularity.sum()).tolist())
        if rng.random() < 0.15:
            chosen |= {items - 1, items - 2, items - 3}
        if rng.random() < 0.1:
            chosen |= {3, 7}
        result[basket * 7 + 3] = [f"i{item:02d}" for item in sorted(chosen)]
    return result


def independent_count(baskets: dict[int, list[str]], itemset: frozenset) -> int:
    return sum(1 for items in baskets.values() if itemset <= set(items))


def mlxtend_itemsets(baskets: dict[int, list[str]], min_count: int, max_length: int) -> dict[frozenset, int]:
    from mlxtend.frequent_patterns import fpgrowth

    onehot = one_hot(baskets)
    frame = fpgrowth(onehot, min_support=(min_count - 0.5) / len(onehot), use_colnames=True, max_len=max_length)
    return {frozenset(itemset): round(support * len(onehot)) for itemset, support in zip(frame["itemsets"], frame["support"])}


def one_hot(baskets: dict[int, list[str]]) -> pd.DataFrame:
    columns = sorted({item for items in baskets.values() for item in items})
    return pd.DataFrame([[item in set(items) for item in columns] for items in baskets.values()], columns=columns)


# ---- hand-made baskets -----------------------------------------------------------------------------

# 8 baskets: A, B, C each in 5/5/4, all three together in 3 (b1-b3), D with each of them once.
HAND = {1: ["A", "B", "C"], 2: ["A", "B", "C"], 3: ["A", "B", "C"], 4: ["A"], 5: ["B"],
        6: ["A", "D"], 7: ["B", "D"], 8: ["C", "D"]}


def test_hand_made_itemsets_and_rule_numbers_are_the_hand_counts():
    found = frequent_itemsets(*long_form(HAND).to_numpy().T, min_count=2, max_length=4).as_dict()
    assert found == {frozenset("A"): 5, frozenset("B"): 5, frozenset("C"): 4, frozenset("D"): 3,
                     frozenset("AB"): 3, frozenset("AC"): 3, frozenset("BC"): 3, frozenset("ABC"): 3}
    rules, _ = mine_rules(long_form(HAND), AssociationSettings(min_support=2 / 8, min_confidence=0, min_lift=0), prune=False)
    by_rule = {(row.antecedent, row.consequent): row for row in rules.itertuples()}
    assert len(by_rule) == 6 + 3  # every pair both ways, every triple with each consequent

    a_c = by_rule[("A", "C")]  # n(A)=5, n(C)=4, n(AC)=3, N=8
    assert (a_c.antecedent_baskets, a_c.consequent_baskets, a_c.rule_baskets, a_c.baskets) == (5, 4, 3, 8)
    assert a_c.support == pytest.approx(3 / 8, abs=1e-12)
    assert a_c.confidence == pytest.approx(3 / 5, abs=1e-12)
    assert a_c.lift == pytest.approx(float(Fraction(3, 5) / Fraction(4, 8)), abs=1e-12)  # 1.2
    assert a_c.leverage == pytest.approx(3 / 8 - (5 / 8) * (4 / 8), abs=1e-12)  # 0.0625
    assert a_c.conviction == pytest.approx((1 - 4 / 8) / (1 - 3 / 5), abs=1e-12)  # 1.25

    ab_c = by_rule[("A + B", "C")]  # always bought with A and B: confidence 1, lift 2, conviction infinite
    assert (ab_c.antecedent_size, ab_c.confidence, ab_c.lift) == (2, 1.0, 2.0)
    assert np.isnan(ab_c.conviction)
    a_b = by_rule[("A", "B")]
    assert a_b.lift == pytest.approx(float(Fraction(3, 5) / Fraction(5, 8)), abs=1e-12)  # 0.96


def test_thresholds_keep_rules_at_or_above_confidence_and_lift():
    settings = AssociationSettings(min_support=2 / 8, min_confidence=0.6, min_lift=1.2)
    rules, _ = mine_rules(long_form(HAND), settings, prune=False)
    assert {(r.antecedent, r.consequent) for r in rules.itertuples()} == {
        ("A", "C"), ("B", "C"), ("C", "A"), ("C", "B"),  # confidence 3/5 and 3/4, lift exactly 1.2
        ("A + B", "C"), ("A + C", "B"), ("B + C", "A"),
    }
    assert rules["lift"].is_monotonic_decreasing


def test_a_longer_antecedent_without_more_lift_than_a_shorter_one_is_pruned():
    # A -> C: 3/4 (lift 1.125); A + B -> C: 2/3 (lift 1.0), no better: pruned. Every longer rule
    # of HAND lifts more than its sub-rules and stays.
    baskets = {1: ["A", "B", "C"], 2: ["A", "B"], 3: ["A", "C"], 4: ["B", "C"], 5: ["A", "B", "C", "D"], 6: ["D"]}
    settings = AssociationSettings(min_support=2 / 6, min_confidence=0, min_lift=0)
    everything, _ = mine_rules(long_form(baskets), settings, prune=False)
    pruned, _ = mine_rules(long_form(baskets), settings)
    before = set(zip(everything["antecedent"], everything["consequent"]))
    after = set(zip(pruned["antecedent"], pruned["consequent"]))
    assert before - after == {("A + B", "C"), ("A + C", "B"), ("B + C", "A")}
    assert all(size == 1 for size in pruned["antecedent_size"])

    kept, _ = mine_rules(long_form(HAND), AssociationSettings(min_support=2 / 8, min_confidence=0, min_lift=0))
    assert {("A + B", "C"), ("A + C", "B"), ("B + C", "A")} <= set(zip(kept["antecedent"], kept["consequent"]))


def test_pruning_compares_with_every_sub_antecedent_not_only_one_item_shorter():
    # A -> D is strong; A + B -> D and A + B + C -> D add nothing; A + B + C -> D must also be
    # compared with A -> D (two items shorter) and dropped.
    baskets = {i: ["A", "D"] for i in range(6)} | {10 + i: ["A", "B", "C", "D"] for i in range(3)} | {
        20 + i: ["A", "B", "C"] for i in range(2)} | {30: ["B", "C"], 31: ["B"], 32: ["C"], 33: ["D"]}
    settings = AssociationSettings(min_support=2 / len(baskets), min_confidence=0, min_lift=0)
    rules, itemsets = mine_rules(long_form(baskets), settings)
    counts = itemsets.as_dict()
    # conf(A -> D) = 9/11 > conf(A + B + C -> D) = 3/5
    assert counts[frozenset("AD")] == 9 and counts[frozenset("A")] == 11 and counts[frozenset("ABCD")] == 3
    assert ("A + B + C", "D") not in set(zip(rules["antecedent"], rules["consequent"]))


# ---- exactness on random baskets and real ones ----------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("share", [0.02, 0.05, 0.12])
def test_itemsets_equal_mlxtend_fpgrowth_on_random_sparse_baskets(seed, share):
    baskets = random_baskets(seed)
    min_count = association.min_count_for(share, len(baskets))
    frame = long_form(baskets)
    ours = frequent_itemsets(frame["basket_id"], frame["item"], min_count, max_length=5)
    assert ours.as_dict() == mlxtend_itemsets(baskets, min_count, 5)
    assert max(ours.by_size()) >= 3


@pytest.mark.parametrize("seed", [3, 4])
def test_every_published_number_equals_an_independent_count(seed):
    baskets = random_baskets(seed)
    rules, _ = mine_rules(long_form(baskets), AssociationSettings(min_support=0.03, min_confidence=0, min_lift=0), prune=False)
    assert len(rules) > 50 and rules["antecedent_size"].max() >= 2
    n = len(baskets)
    for rule in rules.itertuples():
        antecedent = frozenset(rule.antecedent.split(" + "))
        a = independent_count(baskets, antecedent)
        c = independent_count(baskets, frozenset([rule.consequent]))
        ac = independent_count(baskets, antecedent | {rule.consequent})
        assert (rule.antecedent_baskets, rule.consequent_baskets, rule.rule_baskets, rule.baskets) == (a, c, ac, n)
        assert rule.support == pytest.approx(ac / n, rel=1e-9, abs=1e-12)
        assert rule.confidence == pytest.approx(ac / a, rel=1e-9)
        assert rule.lift == pytest.approx(ac / a / (c / n), rel=1e-9)
        assert rule.leverage == pytest.approx(ac / n - a / n * c / n, rel=1e-9, abs=1e-12)
        if ac == a:
            assert np.isnan(rule.conviction)
        else:
            assert rule.conviction == pytest.approx((1 - c / n) / (1 - ac / a), rel=1e-9)


def test_rules_equal_mlxtend_association_rules_with_one_item_consequents():
    from mlxtend.frequent_patterns import association_rules as mlxtend_rules
    from mlxtend.frequent_patterns import fpgrowth

    baskets = random_baskets(5)
    onehot = one_hot(baskets)
    min_count = association.min_count_for(0.03, len(baskets))
    reference = mlxtend_rules(fpgrowth(onehot, min_support=(min_count - 0.5) / len(onehot), use_colnames=True, max_len=4),
                              num_itemsets=len(onehot), metric="confidence", min_threshold=0.3)
    reference = reference[reference["consequents"].map(len) == 1]
    settings = AssociationSettings(min_support=0.03, min_confidence=0.3, min_lift=0)
    ours, _ = mine_rules(long_form(baskets), settings, prune=False)
    assert_same_rules(ours, reference)


def assert_same_rules(ours: pd.DataFrame, reference: pd.DataFrame) -> None:
    expected = {(frozenset(row.antecedents), next(iter(row.consequents))): row for row in reference.itertuples()}
    got = {(frozenset(row.antecedent.split(" + ")), row.consequent): row for row in ours.itertuples()}
    assert set(got) == set(expected)
    for key, row in got.items():
        other = expected[key]
        assert row.support == pytest.approx(other.support, rel=1e-9)
        assert row.confidence == pytest.approx(other.confidence, rel=1e-9)
        assert row.lift == pytest.approx(other.lift, rel=1e-9)
        assert row.leverage == pytest.approx(other.leverage, rel=1e-9, abs=1e-12)
        if np.isfinite(other.conviction):
            assert row.conviction == pytest.approx(other.conviction, rel=1e-9)
        else:
            assert np.isnan(row.conviction)


def weka_baskets() -> dict[int, list[str]]:
    """The ARFF's baskets: each department marked `t` is an item; `total` (low/high), a nominal
    attribute, is an item too (`total=low` or `total=high`), as a one-hot encoding of the
    attributes' values gives it to mlxtend (and Weka's Apriori treats it)."""
    if not WEKA.exists():
        pytest.skip(f"Weka supermarket baskets absent ({WEKA}): the shared data folder is not here")
    names, baskets, data = [], {}, False
    for line in WEKA.read_text(encoding="latin-1").splitlines():
        line = line.strip()
        if not line or line.startswith("%"):
            continue
        if data:
            values = line.split(",")
            assert len(values) == len(names)
            baskets[len(baskets)] = [name if value == "t" else f"{name}={value}" for name, value in zip(names, values)
                                     if value == "t" or (name == "total" and value != "?")]
        elif line.lower().startswith("@attribute"):
            match = re.match(r"@attribute\s+(?:'([^']*)'|(\S+))", line, re.IGNORECASE)
            names.append(match.group(1) or match.group(2))
        elif line.lower().startswith("@data"):
            data = True
    assert len(names) == 217 and len(baskets) == 4627
    return baskets


def test_weka_supermarket_itemsets_equal_mlxtend_and_an_independent_count():
    baskets = weka_baskets()
    frame = long_form(baskets)
    found = frequent_itemsets(frame["basket_id"], frame["item"], association.min_count_for(694 / 4627, 4627), max_length=10)
    assert found.min_count == 694
    assert found.by_size() == {1: 44, 2: 380, 3: 910, 4: 633, 5: 105, 6: 1}
    assert found.as_dict() == mlxtend_itemsets(baskets, 694, 10)
    onehot = one_hot(baskets)
    matrix = onehot.to_numpy()
    column = {name: index for index, name in enumerate(onehot.columns)}
    for itemset, count in found.as_dict().items():
        assert int(matrix[:, [column[item] for item in itemset]].all(axis=1).sum()) == count


def test_weka_supermarket_rules_at_confidence_90_equal_mlxtend():
    from mlxtend.frequent_patterns import association_rules as mlxtend_rules
    from mlxtend.frequent_patterns import fpgrowth

    baskets = weka_baskets()
    onehot = one_hot(baskets)
    reference = mlxtend_rules(fpgrowth(onehot, min_support=693.5 / 4627, use_colnames=True, max_len=10),
                              num_itemsets=4627, metric="confidence", min_threshold=0.9)
    reference = reference[reference["consequents"].map(len) == 1]
    settings = AssociationSettings(min_support=694 / 4627, min_confidence=0.9, min_lift=0, max_itemset_length=10)
    ours, _ = mine_rules(long_form(baskets), settings, prune=False)
    assert len(ours) == 16  # e.g. biscuits + frozen foods + fruit + total=high => bread and cake
    assert_same_rules(ours, reference)


def test_too_many_itemsets_raise_the_support_until_they_fit():
    baskets = random_baskets(6)
    frame = long_form(baskets)
    everything = frequent_itemsets(frame["basket_id"], frame["item"], 4, max_length=5)
    capped = frequent_itemsets(frame["basket_id"], frame["item"], 4, max_length=5, max_itemsets=60)
    assert len(everything.itemsets) > 60 >= len(capped.itemsets) > 0
    assert capped.support_raised >= 1 and capped.min_count > 4
    assert capped.as_dict() == frequent_itemsets(frame["basket_id"], frame["item"], capped.min_count, max_length=5).as_dict()


def test_duplicate_basket_items_count_once():
    frame = long_form(HAND)
    doubled = pd.concat([frame, frame])
    assert frequent_itemsets(doubled["basket_id"], doubled["item"], 2).as_dict() == frequent_itemsets(
        frame["basket_id"], frame["item"], 2).as_dict()


def test_bench_baskets_give_the_same_itemsets_as_mlxtend():
    from bench.association import synthetic_baskets

    basket_ids, items = synthetic_baskets(3000, 200, seed=1, planted=((5, 0.05), (4, 0.04), (3, 0.05)))
    baskets: dict[int, list[str]] = {}
    for basket, item in zip(basket_ids.tolist(), items.tolist()):
        baskets.setdefault(basket, []).append(str(item))
    found = frequent_itemsets(basket_ids, items.astype(str), 15, max_length=5)
    assert max(found.by_size()) >= 4
    assert found.as_dict() == mlxtend_itemsets(baskets, 15, 5)


# ---- offers ---------------------------------------------------------------------------------------


def offer_inputs():
    """Product rule pen -> ink (and pen + paper -> folder); customers: c1 bought pen, c2 pen and
    ink, c5 pen and paper (all stationery); c3 nothing in the window (favourite toys), c4 nothing
    and no favourite. Sellers: stationery pen .40, ink .20, paper .18, folder .16, glue .14 of the
    50 baskets; toys ball .24, doll .20, kite .20."""
    rules = pd.DataFrame([
        {"item_level": "product", "antecedent": "pen", "consequent": "ink", "antecedent_size": 1, "support": 0.2,
         "confidence": 0.6, "lift": 3.0, "leverage": 0.1, "conviction": 2.0, "antecedent_baskets": 10,
         "consequent_baskets": 10, "rule_baskets": 6, "baskets": 50},
        {"item_level": "product", "antecedent": "paper + pen", "consequent": "folder", "antecedent_size": 2, "support": 0.1,
         "confidence": 0.5, "lift": 2.5, "leverage": 0.05, "conviction": 1.5, "antecedent_baskets": 10,
         "consequent_baskets": 10, "rule_baskets": 5, "baskets": 50},
    ])[list(RULE_COLUMNS)]
    purchases = pd.DataFrame({"customer_id": ["c1", "c2", "c2", "c5", "c5"], "sku": ["pen", "pen", "ink", "pen", "paper"]})
    customers = pd.DataFrame({"customer_id": ["c4", "c3", "c2", "c1", "c5"],
                              "favourite_category": [None, "toys", "stationery", "stationery", "stationery"],
                              "marketing_opt_in": [True, False, True, None, True]})
    sellers = pd.DataFrame({"sku": ["pen", "ink", "paper", "folder", "glue", "ball", "doll", "kite"],
                            "category": ["stationery"] * 5 + ["toys"] * 3,
                            "baskets": [20, 10, 9, 8, 7, 12, 10, 10]})
    sellers["share"] = sellers["baskets"] / 50
    return rules, purchases, customers, sellers


def test_offers_fire_rules_exclude_bought_items_and_fill_with_best_sellers_weighted_by_category_affinity():
    rules, purchases, customers, sellers = offer_inputs()
    offers = next_best_offers(rules, purchases, customers, sellers, k=3)
    rule = offers["rule"].astype(object).where(offers["rule"].notna(), None)  # null: pandas shows NaN
    by_customer = {c: list(zip(g["sku"], g["source"], rule[g.index], g["rank"])) for c, g in offers.groupby("customer_id")}
    # Shop mix, add-one smoothed: stationery 6/7, toys 1/7. Affinity with 5 prior purchases:
    # one stationery purchase: stationery (1 + 5 * 6/7) / (6 * 6/7) = 1.028, toys (5/7) / (6/7) = 0.833;
    # two: 1.048 and 0.714; none: 1 everywhere (the shop's best sellers).
    # c1: ink by rule, then ball .24 x .833 = .200, paper .18 x 1.028 = .185.
    assert by_customer["c1"] == [("ink", "rule", "pen => ink", 1), ("ball", "best_seller", None, 2),
                                 ("paper", "category_best_seller", None, 3)]
    # c2 (no rule fires: ink bought, no paper): paper .189, ball .171, folder .168.
    assert by_customer["c2"] == [("paper", "category_best_seller", None, 1), ("ball", "best_seller", None, 2),
                                 ("folder", "category_best_seller", None, 3)]
    # Two rules fire for c5 (pen; paper + pen): by confidence; then ball .171 beats glue .147.
    assert by_customer["c5"] == [("ink", "rule", "pen => ink", 1), ("folder", "rule", "paper + pen => folder", 2),
                                 ("ball", "best_seller", None, 3)]
    # No purchase: the shop's best sellers; the tie at .20 (doll, ink, kite) by sku.
    assert by_customer["c3"] == [("pen", "best_seller", None, 1), ("ball", "category_best_seller", None, 2),
                                 ("doll", "category_best_seller", None, 3)]
    assert by_customer["c4"] == [("pen", "best_seller", None, 1), ("ball", "best_seller", None, 2),
                                 ("doll", "best_seller", None, 3)]
    bought = set(zip(purchases["customer_id"], purchases["sku"]))
    assert not any((c, s) in bought for c, s in zip(offers["customer_id"], offers["sku"]))
    opt_in = offers.drop_duplicates("customer_id").set_index("customer_id")["marketing_opt_in"]
    assert opt_in["c2"] == True and opt_in["c3"] == False and pd.isna(opt_in["c1"])  # noqa: E712
    assert offers.loc[offers["source"] == "rule", "score"].tolist() == [0.6, 0.6, 0.5]
    assert offers.loc[(offers["customer_id"] == "c3"), "score"].tolist() == pytest.approx([0.4, 0.24, 0.2])
    assert offers.loc[(offers["customer_id"] == "c1"), "score"].tolist() == pytest.approx([0.6, 0.24 * 5 / 6, 0.18 * 37 / 36])


def test_offers_are_at_most_k_and_deterministic_whatever_the_row_order():
    rules, purchases, customers, sellers = offer_inputs()
    first = next_best_offers(rules, purchases, customers, sellers, k=2)
    shuffled = next_best_offers(rules.iloc[::-1], purchases.iloc[::-1], customers.sample(frac=1, random_state=3),
                                sellers.iloc[::-1], k=2)
    pd.testing.assert_frame_equal(first, shuffled)
    assert first.groupby("customer_id")["rank"].max().max() == 2
    assert first.groupby("customer_id")["rank"].apply(lambda r: list(r) == list(range(1, len(r) + 1))).all()


# ---- the model -------------------------------------------------------------------------------------


def shop(seed: int = 0, customers: int = 400, days: int = 365) -> dict[str, pd.DataFrame]:
    """A year of orders: customers favour one of three categories, products have long-tail
    popularity, and ink goes with pens (planted)."""
    rng = np.random.default_rng(seed)
    categories = {"stationery": [f"st{i}" for i in range(12)], "toys": [f"to{i}" for i in range(12)],
                  "garden": [f"ga{i}" for i in range(12)]}
    category_of = {sku: category for category, skus in categories.items() for sku in skus}
    names = list(categories)
    rows, basket = [], 0
    favourite = {}
    for customer in range(customers):
        liked = names[customer % 3]
        favourite[f"c{customer:04d}"] = liked
        for _ in range(1 + rng.poisson(4)):
            basket += 1
            date = AS_OF - dt.timedelta(days=int(rng.integers(0, days)))
            chosen = set()
            for _ in range(1 + rng.poisson(1.5)):
                category = liked if rng.random() < 0.7 else names[rng.integers(0, 3)]
                weights = 1.0 / np.arange(1, 13)
                chosen.add(categories[category][rng.choice(12, p=weights / weights.sum())])
            if "st3" in chosen and rng.random() < 0.7:
                chosen.add("st9")
            for sku in chosen:
                rows.append((basket, sku, category_of[sku], f"c{customer:04d}", date, 1, 9.5))
    items = pd.DataFrame(rows, columns=["basket_id", "sku", "category", "customer_id", "order_date", "quantity", "net_amount"])
    customer_frame = pd.DataFrame({"customer_id": list(favourite) + ["c9999"],
                                   "favourite_category": list(favourite.values()) + [None],
                                   "marketing_opt_in": [i % 2 == 0 for i in range(customers)] + [False],
                                   "frequency": 1})
    return {"features.basket_items": items, "features.customer_features": customer_frame}


def fit_and_score(inputs: dict[str, pd.DataFrame], settings: AssociationSettings = AssociationSettings()):
    """The rules fitted on the window's baskets, scored on the same inputs: a refit day's run."""
    fitted, fit_metrics = association.fit({association.BASKETS_TABLE: inputs[association.BASKETS_TABLE]}, AS_OF, settings)
    results, score_metrics = association.score(fitted, inputs, AS_OF, settings)
    return results, {**fit_metrics, **score_metrics}


def test_fit_and_score_publish_exactly_the_declared_columns_with_their_types():
    spec = registry.model("association_rules")
    results, metrics = fit_and_score(shop(customers=1000))
    assert set(results) == {table.name for table in spec.writes}
    for table in spec.writes:
        frame = results[table.name]
        assert list(frame.columns) == list(table.columns)
        assert len(frame) > 0
        warehouse_io.to_arrow(table, frame, {"as_of_date": AS_OF, "run_id": "r1", "model_version": spec.version})
    rules = results["ml.association_rules"]
    assert set(rules["item_level"]) <= {"product", "category"}
    assert set(metrics["itemsets_by_size"]) == {"product", "category"}
    assert ("st3", "st9") in set(zip(rules["antecedent"], rules["consequent"]))
    offers = results["ml.product_recommendations"]
    assert offers["rank"].max() <= 5
    # c9999 bought nothing and has no favourite category: the shop's best sellers.
    assert set(offers.loc[offers["customer_id"] == "c9999", "source"]) == {"best_seller"}
    assert set(offers["source"]) == {"rule", "category_best_seller", "best_seller"}
    for floor in spec.quality_floors:
        assert floor in metrics
    assert metrics["offer_hit_rate_ratio"] is not None and metrics["top_rules_median_holdout_lift"] is not None
    assert metrics["itemsets_by_size"]["product"]["1"] == 36


def test_fit_meets_its_floors_on_a_shop_with_a_planted_rule():
    spec = registry.model("association_rules")
    _, metrics = fit_and_score(shop(seed=1, customers=800))
    for metric, floor in spec.quality_floors.items():
        assert metrics[metric] >= floor, (metric, metrics)


def test_fit_and_score_are_deterministic():
    first = fit_and_score(shop())
    inputs = {name: frame.sample(frac=1, random_state=5) for name, frame in shop().items()}
    second = fit_and_score(inputs)
    for name in first[0]:
        pd.testing.assert_frame_equal(first[0][name], second[0][name])
    assert first[1] == second[1]


def _load_shop(url: str, as_of: dt.date, inputs: dict[str, pd.DataFrame]) -> None:
    """The shop's baskets and customers as dbt would leave them for `as_of` (the only feature date
    held; basket_items holds the baskets as known on its latest build, without a date column)."""
    types = {"features.basket_items": {"basket_id": "integer", "sku": "string", "category": "string",
                                       "customer_id": "string", "order_date": "date"},
             "features.customer_features": {"customer_id": "string", "favourite_category": "string",
                                            "marketing_opt_in": "boolean", "as_of_date": "date"}}
    with connect(url) as warehouse:
        for name, columns in types.items():
            warehouse.ensure_table(name, columns)
            warehouse.execute(f"delete from {name}")
            frame = inputs[name].assign(as_of_date=as_of)[list(columns)]
            warehouse.append_arrow(name, pa.Table.from_pandas(frame, preserve_index=False))


def test_rules_are_mined_again_weekly_or_when_the_window_moves_and_offers_are_made_daily(warehouse_url):
    inputs = shop(seed=1, customers=800)
    _load_shop(warehouse_url, AS_OF, inputs)
    first = tasks.run_model("association_rules", AS_OF, "day-1", warehouse_url=warehouse_url)
    assert first["status"] == "published" and first["metrics"]["refitted"]
    # Next day the window lost its oldest day (0.4% of the rows), within the tolerance: the stored
    # rules score; offers are made for today's customers.
    next_day = AS_OF + dt.timedelta(days=1)
    fewer_customers = {**inputs, "features.customer_features": inputs["features.customer_features"].iloc[:500]}
    _load_shop(warehouse_url, next_day, fewer_customers)
    second = tasks.run_model("association_rules", next_day, "day-2", warehouse_url=warehouse_url)
    assert not second["metrics"]["refitted"] and second["metrics"]["model_age_days"] == 1
    assert 0 < second["metrics"]["training_change_since_fit"] <= registry.TRAINING_CHANGE_TOLERANCE
    assert second["metrics"]["offer_hit_rate_ratio"] == first["metrics"]["offer_hit_rate_ratio"]  # the fit's, carried
    with connect(warehouse_url) as warehouse:
        rules = warehouse.fetchall("select as_of_date, count(*) from ml.association_rules group by 1 order by 1")
        offered = warehouse.fetchall("select count(distinct customer_id) from ml.product_recommendations where as_of_date = ?",
                                     (next_day,))
    assert rules[0][1] == rules[1][1] > 0 and offered == [(500,)]
    # A tenth of the baskets gone from the window: past the 1% tolerance, mined again.
    baskets = inputs["features.basket_items"]
    kept = baskets[baskets["basket_id"] % 10 != 0]
    _load_shop(warehouse_url, next_day, {**inputs, "features.basket_items": kept})
    moved = tasks.run_model("association_rules", next_day, "day-2-rerun", warehouse_url=warehouse_url)
    assert moved["metrics"]["refitted"] and "an aggregate moved" in moved["metrics"]["refit_reason"]
    # A week after its fit, the same window is mined again all the same.
    week_later = next_day + dt.timedelta(days=registry.ASSOCIATION_RETRAIN_MAX_AGE_DAYS + 1)
    _load_shop(warehouse_url, week_later, {**inputs, "features.basket_items": kept})
    aged = tasks.run_model("association_rules", week_later, "day-9", warehouse_url=warehouse_url)
    assert aged["metrics"]["refitted"] and "older than 7 days" in aged["metrics"]["refit_reason"]


def test_below_min_baskets_is_insufficient_data():
    inputs = shop(customers=10)
    baskets = inputs["features.basket_items"]["basket_id"].nunique()
    with pytest.raises(InsufficientData, match=f"{baskets} baskets.*min_baskets=200"):
        fit_and_score(inputs)


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("min_confidence", 1.5, "between 0.0 and 1.0"),
    ("min_support", 0.0, "between 1e-09 and 1.0"),
    ("max_itemset_length", 1, "between 2 and 10"),
    ("top_k_offers", 2.5, "int"),
    ("basket_window_days", 0, "at least 1"),
])
def test_a_setting_out_of_range_names_the_field(field, value, expected):
    with pytest.raises(BadParameter, match=f"^{field}: got {value!r}, expected {re.escape(expected)}"):
        AssociationSettings(**{field: value})


def test_params_and_environment_build_the_settings():
    spec = registry.model("association_rules")
    settings = build_settings(spec, {"association_rules": {"top_k_offers": 3}}, {"CRMW_ASSOCIATION_RULES__MIN_SUPPORT": "0.01"})
    assert (settings.top_k_offers, settings.min_support) == (3, 0.01)
    with pytest.raises(BadParameter, match="param association_rules__min_lift: got -1"):
        build_settings(spec, {"association_rules": {"min_lift": -1}}, {})
    assert {f.name for f in dataclasses.fields(AssociationSettings)} == set(spec.parameter_names().values())


def test_default_support_scales_with_the_baskets():
    settings = AssociationSettings()
    assert association.support_threshold(settings, 500) == 20  # the floor: 0.1% would be 1 basket
    assert association.support_threshold(settings, 1_000_000) == 1000
    assert association.support_threshold(AssociationSettings(min_support=0.0003), 1_000_000) == 300
