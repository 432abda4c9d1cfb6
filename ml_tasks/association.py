"""Frequent itemsets, association rules and next-best offers from the baskets of the window.

A trained model (ml_tasks/contract.py): `fit` mines the rules of both levels from the window's
baskets and judges them on held-out baskets (below); `score` publishes the fitted rules and makes
every customer's offers from their purchases in the day's window. The runner mines again when the
stored rules are a week old or the window moved past the tolerance (ml_tasks/registry.py).

Mining (`frequent_itemsets`), exact and without densifying the baskets:
- baskets become a sparse basket x item matrix (scipy CSR, one entry per basket and item);
  1-itemsets are counted by `bincount`, items below the support threshold dropped;
- pairs from projections: for each frequent item (numbered from the rarest up), the items of its
  baskets that are more frequent are counted by `bincount` and grouped (a stable sort) into each
  frequent pair's sorted basket list;
- larger itemsets from a depth-first Eclat: an itemset is extended only by more frequent items that form a frequent pair with each of its
  members, and its support is the length of the intersection of two sorted basket-id lists
  (a binary search of the shorter list in the longer). Every list is a subset of the rarest
  item's baskets, so lists stay short.
  Why this design: measured (bench/association.py, 2 shared cores, 1M long-tail baskets, 5,000
  skus, support 0.03%, 2,521 itemsets up to 5 items; medians of 3 runs): ours 1.06 s / 350 MB peak
  (input included), Borgelt's C FP-growth (pyfim, no wheel) 0.77 s / 300 MB, mlxtend fpgrowth
  9.0 s / 5.1 GB and apriori 39.6 s / 6.8 GB (both on the dense basket x sku frame); identical
  itemsets and counts from all four. A first version computing pairs by a sparse product and
  every pair's baskets by intersecting the two items' lists ran 1.6 s: projecting the rarer item's
  baskets gives all its pairs' counts and basket lists in one pass. Production needs numpy, scipy
  and pandas only (wheels); pyfim and mlxtend serve as references in the bench and the tests.
- support threshold: `min_support` (a share of baskets) when set; by default it scales with the
  number of baskets: max(`min_support_baskets` (20) baskets, `auto_support` (0.1%) of them), so a
  small shop still needs 20 baskets to trust an itemset and a big one is not flooded by the long
  tail. An itemset is frequent when it is in at least ceil(share x baskets) baskets (a tolerance of
  1e-9 keeps 0.0003 x 1,000,000 at 300).
- `max_itemsets` caps the work: when the itemsets of a level pass it, mining stops and restarts
  with a threshold 1.5x higher, until they fit; metrics record the threshold actually used and how
  often it was raised (a support too low for the data shows there, it does not run for hours).

Rules (`association_rules`): every frequent itemset of two items or more gives one rule per item
as consequent (single-item consequents: an offer is one product), kept when confidence >=
`min_confidence` and lift >= `min_lift`. Every number comes from integer basket counts:
support = n(A+C)/N, confidence = n(A+C)/n(A), lift = n(A+C) N / (n(A) n(C)),
leverage = n(A+C)/N - n(A) n(C)/N^2, conviction = (N - n(C)) n(A) / (N (n(A) - n(A+C))), null
when the consequent never misses (infinite: JSON and SQL hold no infinity). A rule A -> C is
redundant, and dropped, when some rule A' -> C with A' a proper subset of A has a lift at least as
high (same consequent: same comparison as confidence, made on integer cross products, no rounding).
Antecedent text: the items sorted as text, joined by ' + '; the consequent is one item.
Rules are mined at product level (item = sku) and category level separately, on the same baskets.

Offers (`next_best_offers`), top `top_k_offers` skus per customer of customer_features:
- product rules whose antecedent the customer bought in the window fire; each consequent the
  customer has not bought scores the confidence of its best rule (ties: lift, then rule text) and
  carries that rule's text, source 'rule';
- remaining places, or all of them for customers no rule covers, go to the skus not bought yet
  with the highest basket share (in the window) times the customer's affinity for the sku's
  category (their share of purchases in it over the shop's, smoothed as if they had made
  CATEGORY_PRIOR_PURCHASES more purchases in the shop's mix), rule null, source
  'category_best_seller' when the sku is of the customer's favourite category, else
  'best_seller'. A customer buying mostly one category gets its best sellers; a customer with no
  purchase in the window gets the shop's best sellers. Measured on 13 months of 4,000 simulated
  customers (held out as below): the favourite category's best sellers alone hit 0.41 of customers,
  the shop's best sellers 0.60, affinity-weighted best sellers 0.59, and with rule offers first
  (this policy) see `offer_hit_rate` in ml.model_runs;
- marketing_opt_in is carried from customer_features so a campaign filters on it.

Quality on unseen data (the metrics, checked against the spec's floors): baskets of the last
`holdout_fraction` (20%) of the days from the window's first basket to its last (split on a date,
never inside a day) are held out; rules and offers are made again from the earlier baskets alone,
with the same settings and favourite categories recomputed from those baskets, and
- offers: for customers with purchases before the split who bought, after it, a product they had
  not bought before (the only purchases an offer can hit), the hit rate (share with >= 1 offered
  sku bought) and precision@K, against a baseline of the K overall best sellers not yet bought:
  `offer_hit_rate_ratio` = our hit rate / the baseline's;
- rules: the 20 training rules of highest lift at each level whose training confidence predicts
  at least 5 held-out baskets holding antecedent and consequent (fewer, and a held-out lift is
  mostly chance): their held-out confidence and lift; `top_rules_median_holdout_lift` is the
  median held-out lift (1 = no association left: the rules were noise).
A metric is None when the held-out period is too small to judge it (fewer than 400 customers
for the offers; fewer than 500 held-out baskets, or no evaluable rule, for the rules), with the
reason in `holdout_note`: the floors then do not apply.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

from ml_tasks.contract import BadParameter, InsufficientData, check_range, checked_input

if TYPE_CHECKING:  # numpy and pandas are imported where used: the DAG parses the registry, which imports the settings
    import numpy as np
    import pandas as pd
    from pyspark.sql import SparkSession

MODEL_NAME = "association_rules"
MODEL_VERSION = "eclat-rules-offers-3"
# Offers' fill: a customer's category affinity is smoothed as if they had made this many more
# purchases in the shop's category mix; each category offers at most this many sellers beyond the
# places left (the customer may have bought some).
CATEGORY_PRIOR_PURCHASES = 5.0
CATEGORY_CANDIDATE_MARGIN = 20
BASKETS_TABLE = "features.basket_items"
CUSTOMERS_TABLE = "features.customer_features"
RULES_TABLE = "ml.association_rules"
OFFERS_TABLE = "ml.product_recommendations"
LEVELS = ("product", "category")
ITEM_SEPARATOR = " + "
RULE_ARROW = " => "

RULE_COLUMNS = (
    "item_level", "antecedent", "consequent", "antecedent_size", "support", "confidence", "lift",
    "leverage", "conviction", "antecedent_baskets", "consequent_baskets", "rule_baskets", "baskets",
)
OFFER_COLUMNS = ("customer_id", "rank", "sku", "score", "rule", "source", "marketing_opt_in")
# An offer's source, by its code in next_best_offers (the order they are offered in).
OFFER_SOURCES = ("rule", "category_best_seller", "best_seller")
# The columns read from each input (the registry's spec reads these, the model checks them).
BASKET_COLUMNS = ("basket_id", "sku", "category", "customer_id", "order_date")
CUSTOMER_COLUMNS = ("customer_id", "favourite_category", "marketing_opt_in")

# Held-out evaluation: customers needed for the offer metrics, rules checked and the held-out
# baskets a rule's antecedent needs to be checked at all. Offers are judged on 400 customers or
# more: a hit rate near 0.3 on n customers has a relative standard error of sqrt(0.7 / (0.3 n)),
# 12% at 100 (the first choice: 400 customers x 6 months then measured a ratio of 0.894, under the
# 0.9 floor, on noise) and 8% at 400, within the floor's 10% slack.
HOLDOUT_MIN_CUSTOMERS = 400
HOLDOUT_TOP_RULES = 20
# A rule is checked on the held-out baskets when its training confidence predicts at least this
# many baskets there holding antecedent and consequent: fewer, and its held-out lift is mostly
# chance (10 baskets at confidence 0.2 predict 2: a lift of 0, 2.5 or 5 by luck).
HOLDOUT_MIN_EXPECTED_RULE_BASKETS = 5
# The top rules' median held-out lift is judged on at least this many held-out baskets: on 115
# (60 days of 400 simulated customers) it came out 0.92 one day and 1.15 on another seed.
HOLDOUT_MIN_RULE_BASKETS = 500
SUPPORT_RAISE = 1.5


@dataclass(frozen=True)
class AssociationSettings:
    basket_window_days: int = field(default=365, metadata={"doc": "baskets of this many days before the as-of date are mined"})
    min_support: float | None = field(default=None, metadata={"doc": (
        "share of baskets an itemset must be in; null: the larger of min_support_baskets and auto_support of the baskets")})
    min_support_baskets: int = field(default=20, metadata={"doc": "floor of the default support threshold, in baskets"})
    auto_support: float = field(default=0.001, metadata={"doc": "share of baskets of the default support threshold"})
    min_confidence: float = field(default=0.1, metadata={"doc": "rules kept: share of the antecedent's baskets that hold the consequent, at least"})
    min_lift: float = field(default=1.2, metadata={"doc": "rules kept: how many times more often than by chance, at least"})
    max_itemset_length: int = field(default=4, metadata={"doc": "items in an itemset at most"})
    max_itemsets: int = field(default=200_000, metadata={"doc": (
        "itemsets per level at most; above it the support threshold is raised 1.5x until they fit")})
    top_k_offers: int = field(default=5, metadata={"doc": "next-best offers per customer"})
    min_baskets: int = field(default=200, metadata={"doc": "fewer baskets in the window: insufficient data"})
    holdout_fraction: float = field(default=0.2, metadata={"doc": (
        "last share of the window's days held out: rules mined before are checked on it (quality metrics)")})

    def __post_init__(self) -> None:
        check_range("basket_window_days", self.basket_window_days, minimum=1, kind=int)
        check_range("min_support", self.min_support, minimum=1e-9, maximum=1.0, allow_none=True)
        check_range("min_support_baskets", self.min_support_baskets, minimum=1, kind=int)
        check_range("auto_support", self.auto_support, minimum=0.0, maximum=1.0)
        check_range("min_confidence", self.min_confidence, minimum=0.0, maximum=1.0)
        check_range("min_lift", self.min_lift, minimum=0.0)
        check_range("max_itemset_length", self.max_itemset_length, minimum=2, maximum=10, kind=int)
        check_range("max_itemsets", self.max_itemsets, minimum=1, kind=int)
        check_range("top_k_offers", self.top_k_offers, minimum=1, maximum=100, kind=int)
        check_range("min_baskets", self.min_baskets, minimum=1, kind=int)
        check_range("holdout_fraction", self.holdout_fraction, minimum=0.0, maximum=0.5)


# ---- mining ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Itemsets:
    """Frequent itemsets of one set of baskets: `itemsets[i]` (sorted item codes) is in `counts[i]`
    of the `baskets` baskets; `labels[code]` names an item code."""

    itemsets: list[tuple[int, ...]]
    counts: np.ndarray
    labels: np.ndarray
    baskets: int
    min_count: int
    support_raised: int = 0

    def by_size(self) -> dict[int, int]:
        import pandas as pd
        sizes = pd.Series([len(itemset) for itemset in self.itemsets], dtype="int64").value_counts()
        return {int(size): int(count) for size, count in sorted(sizes.items())}

    def as_dict(self) -> dict[frozenset, int]:
        """{frozenset of labels: baskets}: the form to compare with other miners."""
        return {frozenset(self.labels[list(itemset)].tolist()): int(count) for itemset, count in zip(self.itemsets, self.counts)}


class _TooManyItemsets(Exception):
    pass


def min_count_for(share: float, baskets: int) -> int:
    """Baskets an itemset must be in to reach `share` of `baskets` (at least 1)."""
    return max(1, math.ceil(share * baskets - 1e-9))


def support_threshold(settings: AssociationSettings, baskets: int) -> int:
    """The settings' support threshold as a basket count for `baskets` baskets."""
    if settings.min_support is not None:
        return min_count_for(settings.min_support, baskets)
    return max(settings.min_support_baskets, min_count_for(settings.auto_support, baskets))


def frequent_itemsets(basket_ids: Sequence | np.ndarray, items: Sequence | np.ndarray, min_count: int,
                      max_length: int = 4, max_itemsets: int | None = None) -> Itemsets:
    """Itemsets in at least `min_count` baskets, up to `max_length` items, from parallel arrays of
    basket ids and items (one entry per basket and item; duplicates count once). Above
    `max_itemsets` itemsets the threshold is raised 1.5x until they fit (`support_raised` says how
    often; `min_count` is the threshold used)."""
    basket_codes, basket_labels = _codes(basket_ids, sort=False)  # any numbering of baskets will do
    item_codes, labels = _codes(items)
    matrix = _basket_matrix(basket_codes, item_codes, len(basket_labels), len(labels))
    raised = 0
    while True:
        try:
            itemsets, counts = _mine(matrix, min_count, max_length, max_itemsets)
            return Itemsets(itemsets, counts, labels, len(basket_labels), min_count, raised)
        except _TooManyItemsets:
            min_count = math.ceil(min_count * SUPPORT_RAISE)
            raised += 1


def _positions(index: pd.Index, values: pd.Series) -> np.ndarray:
    """index.get_indexer(values), for a categorical column by its categories: one lookup per
    distinct value instead of one per row."""
    import numpy as np
    import pandas as pd

    if not isinstance(values.dtype, pd.CategoricalDtype):
        return index.get_indexer(values)
    codes = values.cat.codes.to_numpy()
    return np.where(codes >= 0, index.get_indexer(values.cat.categories)[codes], -1)


def _distinct_text(values: pd.Series) -> np.ndarray:
    """The distinct values as a numpy text array, taken before the text is made: made per row, the
    hold-out's customer ids at a million customers raised the task's memory by 6.5 GB."""
    import numpy as np
    import pandas as pd

    return np.asarray(pd.unique(values), dtype=object).astype(str)


def _pairs_within(pairs: pd.DataFrame, held: pd.DataFrame) -> np.ndarray:
    """Which (customer_id, item) rows of `pairs` are in `held`, both cut from one frame's
    categorical columns (the same categories), compared as one integer per pair: at a million
    customers a merge with an indicator raised the task's memory by 1.65 GB, this by 0.38 GB."""
    import numpy as np

    def pair_codes(frame: pd.DataFrame) -> np.ndarray:
        # Codes shifted by one so that a missing value (-1) is a value of its own, as a merge matches it.
        width = len(frame["item"].cat.categories) + 1
        return ((frame["customer_id"].cat.codes.to_numpy(np.int64) + 1) * width
                + frame["item"].cat.codes.to_numpy(np.int64) + 1)

    return _contains(np.sort(pair_codes(held)), pair_codes(pairs))


def _as_text(values: pd.Series) -> pd.Series:
    """`values` as text. A categorical column (run() makes the baskets' text columns categorical:
    millions of rows, a few thousand distinct values) stays one, with its categories made text,
    instead of a string per row."""
    import pandas as pd

    if isinstance(values.dtype, pd.CategoricalDtype):
        return values.cat.rename_categories(values.cat.categories.astype(str))
    return values.astype(str)


def _codes(values: Sequence | np.ndarray, sort: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Dense int codes of the values (numbered in sorted order, or in order of appearance), and the values."""
    import numpy as np
    import pandas as pd
    codes, uniques = pd.factorize(pd.Series(values), sort=sort)
    return codes.astype(np.int64), np.asarray(uniques)


def _basket_matrix(basket_codes: np.ndarray, item_codes: np.ndarray, baskets: int, items: int):
    import numpy as np
    from scipy import sparse

    matrix = sparse.csr_matrix(
        (np.ones(len(basket_codes), dtype=np.int32), (basket_codes, item_codes)), shape=(baskets, items)
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1
    return matrix


def _mine(matrix, min_count: int, max_length: int, max_itemsets: int | None) -> tuple[list[tuple[int, ...]], np.ndarray]:
    import numpy as np
    from scipy import sparse

    cap = math.inf if max_itemsets is None else max_itemsets
    baskets, n_items = matrix.shape
    item_counts = np.bincount(matrix.indices, minlength=n_items)
    frequent = np.flatnonzero(item_counts >= min_count)
    if len(frequent) > cap:
        raise _TooManyItemsets
    # Frequent items numbered from the rarest (ties by code): an itemset grows by more frequent items.
    order = frequent[np.lexsort((frequent, item_counts[frequent]))]
    n_frequent = len(order)
    found: list[tuple[int, ...]] = [(int(code),) for code in order]
    counts: list[int] = item_counts[order].tolist()
    if n_frequent < 2 or max_length < 2:
        return found, np.asarray(counts, dtype=np.int64)

    recode = np.full(n_items, -1, dtype=np.int64)
    recode[order] = np.arange(n_frequent)
    columns = recode[matrix.indices]
    kept = columns >= 0
    rows = np.repeat(np.arange(baskets, dtype=np.int64), np.diff(matrix.indptr))[kept]
    columns = columns[kept]
    # Baskets with fewer than two frequent items hold no pair: left out of everything below.
    row_length = np.bincount(rows, minlength=baskets)
    useful = row_length[rows] >= 2
    rows, columns = rows[useful], columns[useful]
    compact = sparse.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, columns)), shape=(baskets, n_frequent))
    by_item = compact.tocsc()
    by_item.sort_indices()
    code_of = order
    state = {"count": len(found)}
    # neighbours[a]: the more frequent items b with {a, b} frequent (sorted); filled from the most
    # frequent item down, so every neighbour's own list is known when an itemset grows by it.
    neighbours: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * n_frequent

    def extend(prefix: tuple[int, ...], members: np.ndarray, lists: list[np.ndarray]) -> None:
        # `prefix` + each member is frequent with basket list lists[i]; record prefix + two members.
        size = len(prefix) + 2
        for i in range(len(members) - 1):
            head = members[i]
            candidates = members[i + 1:]
            linked = neighbours[head]
            position = np.searchsorted(linked, candidates)
            ok = position < len(linked)
            ok[ok] = linked[position[ok]] == candidates[ok]
            new_members, new_lists = [], []
            for j in np.flatnonzero(ok) + i + 1:
                common = _intersect(lists[i], lists[j])
                if len(common) >= min_count:
                    found.append(tuple(int(code_of[c]) for c in (*prefix, head, members[j])))
                    counts.append(len(common))
                    new_members.append(members[j])
                    new_lists.append(common)
            state["count"] += len(new_members)
            if state["count"] > cap:
                raise _TooManyItemsets
            if size < max_length and len(new_members) >= 2:
                extend((*prefix, head), np.asarray(new_members), new_lists)

    for a in range(n_frequent - 2, -1, -1):
        # The baskets of item a, their items more frequent than a: pair counts, and each pair's baskets.
        holding = by_item.indices[by_item.indptr[a]:by_item.indptr[a + 1]]
        starts = compact.indptr[holding]
        lengths = compact.indptr[holding + 1] - starts
        items = compact.indices[_ranges(starts, lengths)]
        later = items > a
        items = items[later]
        pair_counts = np.bincount(items, minlength=n_frequent)
        members = np.flatnonzero(pair_counts >= min_count)
        neighbours[a] = members
        found.extend((int(code_of[a]), int(code_of[b])) for b in members.tolist())
        counts.extend(pair_counts[members].tolist())
        state["count"] += len(members)
        if state["count"] > cap:
            raise _TooManyItemsets
        if max_length >= 3 and len(members) >= 2:
            member_rows = np.repeat(holding, lengths)[later]
            wanted = pair_counts[items] >= min_count
            items, member_rows = items[wanted], member_rows[wanted]
            arranged = np.argsort(items, kind="stable")  # rows stay sorted within an item
            member_rows = member_rows[arranged]
            ends = np.cumsum(pair_counts[members])
            lists = np.split(member_rows, ends[:-1])
            extend((a,), members, lists)
    # Item codes within an itemset in label order (frequency order served the search only).
    found = [tuple(sorted(itemset)) for itemset in found]
    return found, np.asarray(counts, dtype=np.int64)


def _intersect(short: np.ndarray, long: np.ndarray) -> np.ndarray:
    """Common values of two sorted arrays of distinct values."""
    import numpy as np
    if len(short) > len(long):
        short, long = long, short
    if not len(short):
        return short
    position = np.searchsorted(long, short)
    position[position == len(long)] = len(long) - 1
    return short[long[position] == short]


# ---- rules ----------------------------------------------------------------------------------------


def association_rules(itemsets: Itemsets, min_confidence: float = 0.0, min_lift: float = 0.0,
                      prune: bool = True, item_level: str = "product") -> pd.DataFrame:
    """Single-consequent rules of the itemsets with confidence and lift at least the minimums
    (redundant ones pruned unless `prune` is False), columns RULE_COLUMNS, sorted by lift,
    confidence, antecedent and consequent."""
    import numpy as np
    count_of = {itemset: int(count) for itemset, count in zip(itemsets.itemsets, itemsets.counts)}
    n = itemsets.baskets
    antecedents, consequents, n_a, n_c, n_ac = [], [], [], [], []
    for itemset, count in count_of.items():
        if len(itemset) < 2:
            continue
        for position, consequent in enumerate(itemset):
            antecedent = itemset[:position] + itemset[position + 1:]
            antecedents.append(antecedent)
            consequents.append(consequent)
            n_a.append(count_of[antecedent])
            n_c.append(count_of[(consequent,)])
            n_ac.append(count)
    a, c, ac = (np.asarray(values, dtype=np.int64) for values in (n_a, n_c, n_ac))
    # Exact thresholds on counts where possible: confidence = ac/a, lift = ac n / (a c).
    keep = (ac >= min_confidence * a - 1e-12 * a) & (ac * n >= min_lift * a * c * (1 - 1e-12))
    index = np.flatnonzero(keep)
    if prune:
        index = index[_not_redundant([antecedents[i] for i in index], [consequents[i] for i in index],
                                     a[index], ac[index], count_of)]
    return _rules_frame(itemsets, item_level, [antecedents[i] for i in index], [consequents[i] for i in index],
                        a[index], c[index], ac[index])


def _not_redundant(antecedents: list[tuple[int, ...]], consequents: list[int], n_a: np.ndarray, n_ac: np.ndarray,
                   count_of: Mapping[tuple[int, ...], int]) -> np.ndarray:
    """Whether each rule A -> C beats every rule A' -> C with A' a proper subset of A on confidence
    (lift, for the same consequent). best[(A, C)] is the best (ac, a) over A and its subsets."""
    import numpy as np
    best: dict[tuple[tuple[int, ...], int], tuple[int, int]] = {}

    def best_of(antecedent: tuple[int, ...], consequent: int) -> tuple[int, int]:
        key = (antecedent, consequent)
        if key not in best:
            whole = tuple(sorted((*antecedent, consequent)))
            top = (count_of[whole], count_of[antecedent])
            if len(antecedent) > 1:
                for drop in range(len(antecedent)):
                    other = best_of(antecedent[:drop] + antecedent[drop + 1:], consequent)
                    if other[0] * top[1] > top[0] * other[1]:
                        top = other
            best[key] = top
        return best[key]

    keep = np.ones(len(antecedents), dtype=bool)
    for i, (antecedent, consequent) in enumerate(zip(antecedents, consequents)):
        if len(antecedent) < 2:
            continue
        for drop in range(len(antecedent)):
            ac, a = best_of(antecedent[:drop] + antecedent[drop + 1:], consequent)
            if n_ac[i] * a <= ac * n_a[i]:  # confidence(A -> C) <= confidence(A' -> C)
                keep[i] = False
                break
    return keep


def _rules_frame(itemsets: Itemsets, item_level: str, antecedents: list[tuple[int, ...]], consequents: list[int],
                 a: np.ndarray, c: np.ndarray, ac: np.ndarray) -> pd.DataFrame:
    import numpy as np
    import pandas as pd
    n = itemsets.baskets
    labels = itemsets.labels
    af, cf, acf = a.astype(float), c.astype(float), ac.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        conviction = np.where(a > ac, (n - cf) * af / (n * (af - acf)), np.nan)
    frame = pd.DataFrame({
        "item_level": pd.Series([item_level] * len(a), dtype=object),
        "antecedent": pd.Series([item_text(labels[list(antecedent)]) for antecedent in antecedents], dtype=object),
        "consequent": pd.Series([str(labels[consequent]) for consequent in consequents], dtype=object),
        "antecedent_size": np.asarray([len(antecedent) for antecedent in antecedents], dtype=np.int64),
        "support": acf / n,
        "confidence": acf / af if len(a) else np.empty(0),
        "lift": acf * n / (af * cf) if len(a) else np.empty(0),
        "leverage": acf / n - (af / n) * (cf / n),
        "conviction": conviction,
        "antecedent_baskets": a.astype(np.int64),
        "consequent_baskets": c.astype(np.int64),
        "rule_baskets": ac.astype(np.int64),
        "baskets": np.full(len(a), n, dtype=np.int64),
    })
    frame = frame.sort_values(["lift", "confidence", "antecedent", "consequent"], ascending=[False, False, True, True],
                              kind="mergesort")
    return frame.reset_index(drop=True)[list(RULE_COLUMNS)]


def item_text(items: Iterable) -> str:
    """An antecedent as text: its items sorted as text, joined by ' + '."""
    return ITEM_SEPARATOR.join(sorted(str(item) for item in items))


def rule_text(antecedent: str, consequent: str) -> str:
    return f"{antecedent}{RULE_ARROW}{consequent}"


def mine_rules(baskets: pd.DataFrame, settings: AssociationSettings, item_level: str = "product",
               prune: bool = True) -> tuple[pd.DataFrame, Itemsets]:
    """Rules of one level from rows with basket_id and item (one level's rows of basket_items):
    the call for a check against known rules. Returns the rules and the itemsets they came from."""
    total = baskets["basket_id"].nunique()
    itemsets = frequent_itemsets(baskets["basket_id"].to_numpy(), _as_text(baskets["item"]),
                                 support_threshold(settings, total), settings.max_itemset_length, settings.max_itemsets)
    rules = association_rules(itemsets, settings.min_confidence, settings.min_lift, prune, item_level)
    return rules, itemsets


# A miner of one level's rules, called as mine_rules is: (rows, settings, item_level) -> (rules, itemsets).
RuleMiner = Callable[["pd.DataFrame", AssociationSettings, str], "tuple[pd.DataFrame, Itemsets]"]


# ---- offers ---------------------------------------------------------------------------------------


def next_best_offers(product_rules: pd.DataFrame, purchases: pd.DataFrame, customers: pd.DataFrame,
                     best_sellers: pd.DataFrame, k: int) -> pd.DataFrame:
    """Top `k` skus per customer (OFFER_COLUMNS).

    product_rules: RULE_COLUMNS at product level; purchases: customer_id, sku (bought in the window);
    customers: customer_id, favourite_category, marketing_opt_in (one row each); best_sellers:
    sku, category, baskets, share (the window's product baskets)."""
    import numpy as np
    import pandas as pd
    customers = customers.drop_duplicates("customer_id").sort_values("customer_id", kind="mergesort").reset_index(drop=True)
    customer_codes = pd.Index(customers["customer_id"])
    rule_items = [item for text in product_rules["antecedent"] for item in text.split(ITEM_SEPARATOR)]
    # Each part's distinct skus first: the purchases are tens of millions of rows at a million
    # customers, and made text whole they held a string object per row (+2.7 GB).
    every_sku = pd.concat([pd.Series(pd.unique(part)).astype(str) for part in
                           (best_sellers["sku"], purchases["sku"], product_rules["consequent"], pd.Series(rule_items, dtype=object))])
    skus = pd.Index(np.sort(pd.unique(every_sku.to_numpy(dtype=object))))
    n_skus = max(len(skus), 1)
    who = _positions(customer_codes, purchases["customer_id"])
    what = _positions(skus, _as_text(purchases["sku"]))
    known = who >= 0
    bought = _sorted_distinct(who[known].astype(np.int64) * n_skus + what[known])

    if "category" not in purchases.columns:
        purchases = purchases.assign(category=purchases["sku"].astype(str).map(
            best_sellers.assign(sku=best_sellers["sku"].astype(str)).set_index("sku")["category"]))
    rule_offers = _rule_offers(product_rules, bought, skus, n_skus, k)
    # Fill with popular skus, weighted by the customer's taste for their categories, not bought or offered yet.
    taken = _sorted_distinct(np.concatenate([bought, rule_offers["key"].to_numpy(np.int64)]))
    places = k - np.bincount(rule_offers["customer"].to_numpy(np.int64), minlength=len(customers))
    fill = _popular_offers(customers, who, purchases, best_sellers, skus, n_skus, taken, places)
    # Arrays of one value per purchase row, freed before the offers are assembled: a scoring day at a
    # million customers peaked 0.8 GB lower.
    del who, what, known, bought, taken
    # Sources by code (rule offers first, then the fill by score), and the offers put in order by
    # their sort keys alone: a sorted copy of every column was the task's peak at a million customers.
    fill_source = np.where(fill["favourite"].to_numpy(bool), 1, 2) if len(fill) else np.empty(0, dtype=np.int64)
    offers = pd.concat([rule_offers.assign(source=0), fill.drop(columns="favourite", errors="ignore").assign(source=fill_source)],
                       ignore_index=True)
    del rule_offers, fill
    offers["order"] = (offers["source"] > 0).astype(np.int64)
    ranked = offers[["customer", "order", "score", "tie", "sku_code"]].sort_values(
        ["customer", "order", "score", "tie", "sku_code"], ascending=[True, True, False, False, True], kind="mergesort").index.to_numpy()
    customer = offers["customer"].to_numpy(np.int64)[ranked]
    # The rank within each customer's run of offers (they are sorted by customer).
    first = np.flatnonzero(np.concatenate(([True], customer[1:] != customer[:-1]))) if len(customer) else np.empty(0, dtype=np.int64)
    rank = np.arange(len(customer)) - np.repeat(first, np.diff(np.append(first, len(customer)))) + 1
    # Text columns as categoricals over the customers, skus and sources by their codes: made per
    # row, pandas turned 10.5M offers' ids, skus and rules into text in about 20 s and +1.3 GB.
    return pd.DataFrame({
        "customer_id": pd.Categorical.from_codes(customer, categories=pd.Index(customers["customer_id"])),
        "rank": rank.astype(np.int64),
        "sku": pd.Categorical.from_codes(offers["sku_code"].to_numpy(np.int64)[ranked], categories=skus),
        "score": offers["score"].to_numpy(dtype=float)[ranked],
        "rule": pd.Categorical(offers["rule"].to_numpy(dtype=object)[ranked]),
        "source": pd.Categorical.from_codes(offers["source"].to_numpy(np.int64)[ranked], categories=OFFER_SOURCES),
        "marketing_opt_in": customers["marketing_opt_in"].astype("boolean").to_numpy()[customer],
    })


_OFFER_FIELDS = ["customer", "sku_code", "key", "score", "tie", "rule"]


def _no_offers() -> pd.DataFrame:
    import pandas as pd

    kinds = {"rule": object, "score": "float64", "tie": "float64"}
    return pd.DataFrame({name: pd.Series(dtype=kinds.get(name, "int64")) for name in _OFFER_FIELDS})


def _rule_offers(rules: pd.DataFrame, bought: np.ndarray, skus: pd.Index, n_skus: int, k: int) -> pd.DataFrame:
    """Best rule per (customer, consequent) among rules firing on the customer's purchases, top k."""
    import numpy as np
    import pandas as pd
    if rules.empty or not len(bought):
        return _no_offers()
    antecedent_items = [text.split(ITEM_SEPARATOR) for text in rules["antecedent"]]
    width = max(len(items) for items in antecedent_items)
    antecedent = np.full((len(rules), width), -1, dtype=np.int64)
    for row, items in enumerate(antecedent_items):
        antecedent[row, : len(items)] = skus.get_indexer(items)
    consequent = skus.get_indexer(rules["consequent"])
    # Rules by their first antecedent item: a purchase of that item is where a rule may fire.
    first = antecedent[:, 0]
    by_first = np.argsort(first, kind="stable")
    starts = np.searchsorted(first[by_first], np.arange(n_skus))
    ends = np.searchsorted(first[by_first], np.arange(n_skus), side="right")
    customer, item = np.divmod(bought, n_skus)
    fan = ends[item] - starts[item]
    texts = np.asarray([rule_text(a, c) for a, c in zip(rules["antecedent"], rules["consequent"])], dtype=object)
    text_rank = _text_rank(texts)
    confidence, lift = rules["confidence"].to_numpy(float), rules["lift"].to_numpy(float)
    parts = []
    # Customers in chunks of about 4M fired rules at a time, so memory stays bounded.
    bounds = _chunks(customer, fan, 4_000_000)
    for low, high in bounds:
        chunk_fan = fan[low:high]
        owner = np.repeat(customer[low:high], chunk_fan)
        rule = by_first[_ranges(starts[item[low:high]], chunk_fan)]
        fires = np.ones(len(rule), dtype=bool)
        for column in range(1, width):
            needed = antecedent[rule, column]
            fires &= (needed < 0) | _contains(bought, owner * n_skus + needed)
        key = owner * n_skus + consequent[rule]
        fires &= ~_contains(bought, key)
        owner, rule, key = owner[fires], rule[fires], key[fires]
        # Best rule per (customer, sku): confidence, then lift, then rule text (rules are sorted by text rank).
        frame = pd.DataFrame({"customer": owner, "sku_code": consequent[rule], "key": key, "score": confidence[rule],
                              "tie": lift[rule], "text_rank": text_rank[rule], "rule_index": rule})
        frame = frame.sort_values(["key", "score", "tie", "text_rank"], ascending=[True, False, False, True], kind="mergesort")
        frame = frame.drop_duplicates("key")
        frame = frame.sort_values(["customer", "score", "tie", "sku_code"], ascending=[True, False, False, True],
                                  kind="mergesort")
        frame = frame[frame.groupby("customer").cumcount() < k]
        frame["rule"] = texts[frame["rule_index"].to_numpy()]
        parts.append(frame[_OFFER_FIELDS])
    return pd.concat(parts, ignore_index=True)


def _text_rank(texts: np.ndarray) -> np.ndarray:
    import numpy as np
    ranks = np.empty(len(texts), dtype=np.int64)
    ranks[np.argsort(texts.astype(str), kind="stable")] = np.arange(len(texts))
    return ranks


def _chunks(customer: np.ndarray, fan: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Slices of the (customer-sorted) purchases, cut between customers, of about `size` fired rules."""
    import numpy as np
    total = np.cumsum(fan)
    bounds, low = [], 0
    while low < len(fan):
        before = total[low - 1] if low else 0
        high = int(np.searchsorted(total, before + size, side="right"))
        high = max(high, low + 1)
        # Never split one customer's purchases.
        high = int(np.searchsorted(customer, customer[high - 1], side="right"))
        bounds.append((low, high))
        low = high
    return bounds


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The positions starts[i], starts[i] + 1, ..., starts[i] + lengths[i] - 1 of every i, one
    after another: many slices of one array gathered at once."""
    import numpy as np
    return np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))


def _sorted_distinct(keys: np.ndarray) -> np.ndarray:
    """The distinct integer keys, sorted: np.unique's result, which under numpy 2.4 takes a hash
    path 20x slower than sorting (2.0 s against 0.1 s on 1.8M keys)."""
    import numpy as np
    keys = np.sort(keys)
    return keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if len(keys) else keys


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    import numpy as np
    if not len(sorted_keys):
        return np.zeros(len(keys), dtype=bool)
    position = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[position] == keys


def _popular_offers(customers: pd.DataFrame, who: np.ndarray, purchases: pd.DataFrame, best_sellers: pd.DataFrame, skus: pd.Index,
                    n_skus: int, taken: np.ndarray, places: np.ndarray) -> pd.DataFrame:
    """For each customer with places left, the skus not taken with the highest basket share times the
    customer's affinity for the sku's category: the customer's share of purchases in the category
    over everyone's, smoothed towards 1 as if the customer had made CATEGORY_PRIOR_PURCHASES more
    purchases in the shop's mix (one purchase of a category says little). A customer buying mostly
    from one category gets its best sellers first; one with no purchase gets the shop's best sellers.
    `who`: each purchase's row in `customers` (-1 for none)."""
    import numpy as np
    import pandas as pd
    wanting = np.flatnonzero(places > 0)
    if not len(wanting) or best_sellers.empty:
        return _no_offers()
    ranked = best_sellers.assign(category=best_sellers["category"].astype(str))
    ranked = ranked.sort_values(["category", "baskets", "sku"], ascending=[True, False, True], kind="mergesort")
    categories = pd.Index(sorted(ranked["category"].unique()))
    # The top sellers of each category, deep enough for a customer's places plus some already bought.
    depth = int(places.max()) + CATEGORY_CANDIDATE_MARGIN
    ranked = ranked[ranked.groupby("category").cumcount() < depth]
    category_code = categories.get_indexer(ranked["category"])
    slot = ranked.groupby("category").cumcount().to_numpy()
    seller = np.full((len(categories), depth), -1, dtype=np.int64)
    share = np.zeros((len(categories), depth))
    seller[category_code, slot] = skus.get_indexer(ranked["sku"].astype(str))
    share[category_code, slot] = ranked["share"].to_numpy(float)

    bought_in = categories.get_indexer(_as_text(purchases["category"]))
    known = (who >= 0) & (bought_in >= 0)
    counts = np.zeros((len(customers), len(categories)))
    np.add.at(counts, (who[known], bought_in[known]), 1.0)
    # The shop's category mix over every purchase (not only those of the customers offered to, so
    # a customer's offers do not depend on who else is offered to), add-one smoothed so a category
    # no one bought still has a share.
    shop = np.bincount(bought_in[bought_in >= 0], minlength=len(categories)).astype(float)
    mix = (shop + 1.0) / (shop.sum() + len(categories))
    favourite = categories.get_indexer(customers["favourite_category"].astype(object).where(
        customers["favourite_category"].notna(), None))

    parts = []
    width = len(categories) * depth
    seller_flat, share_flat = seller.reshape(width), share.reshape(width)
    # Candidate positions by their sku, to find the taken (customer, sku) pairs among the candidates
    # by a search of the taken keys (one per pair) instead of one per customer and candidate.
    slots = np.flatnonzero(seller_flat >= 0)
    slots = slots[np.argsort(seller_flat[slots], kind="stable")]
    slot_skus = seller_flat[slots]
    taken_customer, taken_sku = np.divmod(taken, n_skus)
    chunk = max(1, 20_000_000 // width)
    for low in range(0, len(wanting), chunk):
        owner = wanting[low: low + chunk]
        affinity = (counts[owner] + CATEGORY_PRIOR_PURCHASES * mix) / (
            (counts[owner].sum(axis=1, keepdims=True) + CATEGORY_PRIOR_PURCHASES) * mix)
        score = (affinity[:, :, None] * share[None, :, :]).reshape(len(owner), width)
        free = np.broadcast_to(seller_flat >= 0, score.shape).copy()
        first = np.searchsorted(taken_customer, owner[0], side="left")
        last = np.searchsorted(taken_customer, owner[-1], side="right")
        row = np.searchsorted(owner, taken_customer[first:last])
        held = owner[np.minimum(row, len(owner) - 1)] == taken_customer[first:last]
        row, sku = row[held], taken_sku[first:last][held]
        start, stop = np.searchsorted(slot_skus, sku, side="left"), np.searchsorted(slot_skus, sku, side="right")
        many = stop - start
        free[np.repeat(row, many), slots[_ranges(start, many)]] = False
        score = np.where(free, score, -np.inf)
        # Only a row's `places` best free candidates are offered: keep those scoring at least its
        # places-th best (ties too) before ordering them exactly, instead of sorting every row whole.
        most = int(places[owner].max())
        if most < width:
            cut = -np.partition(-score, most - 1, axis=1)[:, most - 1]
            rows, position = np.nonzero(free & (score >= cut[:, None]))
        else:
            rows, position = np.nonzero(free)
        # Best first; ties by the sku's own share, then sku code, so the order is total.
        order = np.lexsort((seller_flat[position], -share_flat[position], -score[rows, position], rows))
        rows, position = rows[order], position[order]
        within = np.arange(len(rows)) - np.searchsorted(rows, rows)
        keep = within < places[owner][rows]
        rows, position = rows[keep], position[keep]
        customer = owner[rows]
        sku_code = seller_flat[position]
        parts.append(pd.DataFrame({
            "customer": customer, "sku_code": sku_code, "key": customer * n_skus + sku_code,
            "score": score[rows, position], "tie": share_flat[position], "rule": None,
            "favourite": (position // depth) == favourite[customer],
        }))
    return pd.concat(parts, ignore_index=True) if parts else _no_offers()


def best_sellers(product_items: pd.DataFrame) -> pd.DataFrame:
    """sku, category, baskets, share: product-level items ranked by the baskets holding them."""
    total = max(product_items["basket_id"].nunique(), 1)
    counts = (product_items.assign(item=_as_text(product_items["item"]))
              .groupby(["item", "category"], dropna=False)["basket_id"].nunique().rename("baskets").reset_index())
    counts = counts.rename(columns={"item": "sku"})
    counts["share"] = counts["baskets"] / total
    return counts.sort_values(["baskets", "sku"], ascending=[False, True], kind="mergesort").reset_index(drop=True)


# ---- the model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AssociationFit:
    """The rules mined from a window's baskets (RULE_COLUMNS, both levels): what scoring needs."""
    rules: pd.DataFrame


def fit(training: Mapping[str, pd.DataFrame], as_of_date: dt.date, settings: AssociationSettings,
        spark: SparkSession | None = None) -> tuple[AssociationFit, dict]:
    """Rules at both levels from the window's baskets, with the mining figures and the quality of
    rules and offers made the same way from the window's earlier baskets, judged on its later ones.
    Mined here, or with `spark` (a SparkSession: the warehouse is Spark) by MLlib's FPGrowth on it,
    which finds the same itemsets (ml_tasks/association_spark.py)."""
    mine = mine_rules
    if spark is not None:
        from ml_tasks.association_spark import mine_frame_rules_spark

        mine = functools.partial(mine_frame_rules_spark, spark)
    items, baskets = _window_items(training, as_of_date, settings)
    rules, metrics = _level_rules(items, settings, mine)
    holdout = _holdout_metrics(items, _basket_dates(training), settings, mine)
    return AssociationFit(rules), {"baskets": baskets, **metrics, **holdout}


def score(fitted: AssociationFit, inputs: Mapping[str, pd.DataFrame], as_of_date: dt.date,
          settings: AssociationSettings) -> tuple[dict[str, pd.DataFrame], dict]:
    """The fitted rules, and offers for every customer from their purchases in today's window."""
    items, baskets = _window_items(inputs, as_of_date, settings)
    customers = checked_input(inputs, CUSTOMERS_TABLE, CUSTOMER_COLUMNS, (BASKETS_TABLE, CUSTOMERS_TABLE))
    products = items[items["item_level"] == "product"]
    offers = _offers(fitted.rules, products, best_sellers(products), customers, settings)
    metrics = {
        "baskets": baskets,
        "customers": int(customers["customer_id"].nunique()),
        "offers": int(len(offers)),
        "customers_with_offers": int(offers["customer_id"].nunique()),
        "customers_with_rule_offers": int(offers.loc[offers["source"] == "rule", "customer_id"].nunique()),
    }
    return {RULES_TABLE: fitted.rules, OFFERS_TABLE: offers}, metrics


def _window_items(tables: Mapping[str, pd.DataFrame], as_of_date: dt.date,
                  settings: AssociationSettings) -> tuple[pd.DataFrame, int]:
    """The window's basket items at both levels (item_level, item: a basket's products, and its
    distinct categories), checked, text columns as categoricals, and how many baskets they hold;
    InsufficientData below min_baskets."""
    import pandas as pd
    from pandas.api.types import union_categoricals
    products = checked_input(tables, BASKETS_TABLE, BASKET_COLUMNS, (BASKETS_TABLE,))
    # Millions of rows over a few thousand skus and customers: categorical text columns group, match
    # and filter by their codes (at 100,000 customers, 6.1M rows: peak 3.9 GB -> 2.6 GB, 20% faster).
    products = products.astype({column: "category" for column in ("sku", "category", "customer_id")})
    # The category level is derived here, not stored: a basket holds each category once however
    # many of its products share it.
    categories = products.drop_duplicates(["basket_id", "category"])
    levels = pd.Categorical.from_codes([0] * len(products) + [1] * len(categories), categories=list(LEVELS))
    # No order date per item: only the hold-out's split reads it, per basket (_basket_dates), and at
    # a million customers it was 0.5 GB of the items held through the whole task.
    both = {column: pd.concat([products[column], categories[column]], ignore_index=True)
            for column in ("basket_id", "category", "customer_id")}
    items = pd.DataFrame({
        "basket_id": both["basket_id"],
        "item_level": levels,
        "item": union_categoricals([products["sku"].array, categories["category"].array]),
        "category": both["category"],
        "customer_id": both["customer_id"],
    })
    baskets = int(items["basket_id"].nunique())
    if baskets < settings.min_baskets:
        raise InsufficientData(f"{BASKETS_TABLE}: {baskets} baskets in the {settings.basket_window_days} days to"
                               f" {as_of_date}, fewer than min_baskets={settings.min_baskets}")
    return items, baskets


def _level_rules(items: pd.DataFrame, settings: AssociationSettings,
                 mine: RuleMiner = mine_rules) -> tuple[pd.DataFrame, dict]:
    """Rules of both levels (RULE_COLUMNS) and the mining figures of each, each level mined by `mine`."""
    import pandas as pd
    rules, metrics = [], {"min_count": {}, "min_support_used": {}, "support_raised": {}, "itemsets_by_size": {},
                          "rules": {}, "rules_before_pruning": {}}
    for level in LEVELS:
        rows = items[items["item_level"] == level]
        if rows.empty:
            continue
        level_rules, itemsets = mine(rows, settings, level)
        unpruned = association_rules(itemsets, settings.min_confidence, settings.min_lift, False, level)
        rules.append(level_rules)
        metrics["min_count"][level] = itemsets.min_count
        metrics["min_support_used"][level] = itemsets.min_count / itemsets.baskets
        metrics["support_raised"][level] = itemsets.support_raised
        metrics["itemsets_by_size"][level] = {str(size): count for size, count in itemsets.by_size().items()}
        metrics["rules"][level] = int(len(level_rules))
        metrics["rules_before_pruning"][level] = int(len(unpruned))
    return (pd.concat(rules, ignore_index=True) if rules else _empty(RULE_COLUMNS)), metrics


def _offers(rules: pd.DataFrame, products: pd.DataFrame, ranked: pd.DataFrame, customers: pd.DataFrame,
            settings: AssociationSettings) -> pd.DataFrame:
    """Offers for `customers` from the product `rules` and their purchases among `products` (the
    product-level items), `ranked` their best_sellers."""
    purchases = products[["customer_id", "item", "category"]].rename(columns={"item": "sku"}).drop_duplicates()
    return next_best_offers(rules[rules["item_level"] == "product"], purchases, customers, ranked, settings.top_k_offers)


def _basket_dates(tables: Mapping[str, pd.DataFrame]) -> pd.Series:
    """Each window basket's order date, by basket id."""
    import pandas as pd

    return pd.to_datetime(tables[BASKETS_TABLE].groupby("basket_id")["order_date"].first())


def _holdout_metrics(items: pd.DataFrame, dates: pd.Series, settings: AssociationSettings,
                     mine: RuleMiner = mine_rules) -> dict:
    import numpy as np
    import pandas as pd
    none = {"holdout_customers": 0, "offer_hit_rate": None, "offer_precision_at_k": None, "baseline_hit_rate": None,
            "baseline_precision_at_k": None, "offer_hit_rate_ratio": None, "rule_offer_precision": None,
            "top_rules_evaluated": 0, "top_rules_median_holdout_lift": None,
            "top_rules_median_confidence_ratio": None, "holdout_note": ""}
    if settings.holdout_fraction == 0:
        return {**none, "holdout_note": "holdout_fraction is 0: not measured"}
    first, last = dates.min(), dates.max()
    split = (first + (last - first) * (1 - settings.holdout_fraction)).normalize() + pd.Timedelta(days=1)
    in_train = items["basket_id"].isin(dates.index[dates < split]).to_numpy()
    train = items[in_train]
    n_train, n_test = train["basket_id"].nunique(), items.loc[~in_train, "basket_id"].nunique()
    result = {**none, "holdout_split_date": split.date().isoformat(), "train_baskets": int(n_train),
              "holdout_baskets": int(n_test)}
    if n_train < settings.min_baskets or n_test == 0:
        return {**result, "holdout_note": f"{n_train} baskets before {split.date()} and {n_test} after: too few to measure"}
    # Rules from the training baskets, mined before the hold-out's other frames are made: mining's
    # working memory on top of them was the task's peak at a million customers (7.4 GB).
    rules, _ = _level_rules(train, settings, mine)
    train_products = train[train["item_level"] == "product"]
    del train  # the offers read its product rows alone
    test = items[~in_train]
    notes = []

    # Offers: customers with training history who bought something new after the split, made for
    # the judged customers alone (a customer's offers do not depend on whom else they are made
    # for), with favourite categories from the training baskets: the published ones saw the
    # held-out period.
    test_products = test[test["item_level"] == "product"]
    history = train_products[["customer_id", "item"]].drop_duplicates()
    later = test_products[["customer_id", "item"]].drop_duplicates()
    new = later[~_pairs_within(later, history)].reset_index(drop=True)
    evaluated = pd.Index(np.sort(np.intersect1d(_distinct_text(new["customer_id"]), _distinct_text(history["customer_id"]))))
    if len(evaluated) >= HOLDOUT_MIN_CUSTOMERS:
        ranked = best_sellers(train_products)
        offers = _offers(rules, train_products, ranked, _training_favourites(evaluated, train_products), settings)
        hits = offers[["customer_id", "sku"]].merge(
            new.rename(columns={"item": "sku"}).assign(hit=True), on=["customer_id", "sku"], how="left"
        )["hit"].notna().to_numpy()
        rule_rows = offers["source"].to_numpy() == "rule"
        base_hit_customers, base_hits = _baseline_hits(ranked["sku"].astype(str).to_numpy(dtype=object), evaluated,
                                                       history, new, settings.top_k_offers)
        offer_hit_rate = offers.loc[hits, "customer_id"].nunique() / len(evaluated)
        baseline_hit_rate = base_hit_customers / len(evaluated)
        result.update(
            holdout_customers=int(len(evaluated)),
            offer_hit_rate=float(offer_hit_rate),
            offer_precision_at_k=float(hits.sum() / (len(evaluated) * settings.top_k_offers)),
            baseline_hit_rate=float(baseline_hit_rate),
            baseline_precision_at_k=float(base_hits / (len(evaluated) * settings.top_k_offers)),
            offer_hit_rate_ratio=float(offer_hit_rate / baseline_hit_rate) if baseline_hit_rate else None,
            rule_offer_precision=float(hits[rule_rows].mean()) if rule_rows.any() else None,
        )
    else:
        result["holdout_customers"] = int(len(evaluated))
        notes.append(f"{len(evaluated)} customers bought something new after the split, fewer than {HOLDOUT_MIN_CUSTOMERS}")

    # Rules: the top training rules per level, counted again on the held-out baskets.
    lifts, ratios, checked = [], [], []
    if n_test < HOLDOUT_MIN_RULE_BASKETS:
        notes.append(f"{n_test} held-out baskets, fewer than {HOLDOUT_MIN_RULE_BASKETS}: rules not checked")
    for level in LEVELS if n_test >= HOLDOUT_MIN_RULE_BASKETS else ():
        level_rules = rules[rules["item_level"] == level]
        held = test[test["item_level"] == level]
        if level_rules.empty or held.empty:
            continue
        counted = count_rules(level_rules, held)
        expected = counted["holdout_antecedent_baskets"] * counted["confidence"]
        counted = counted[expected >= HOLDOUT_MIN_EXPECTED_RULE_BASKETS].head(HOLDOUT_TOP_RULES)
        lifts += counted["holdout_lift"].tolist()
        ratios += (counted["holdout_confidence"] / counted["confidence"]).tolist()
        checked += [rule_text(a, c) for a, c in zip(counted["antecedent"], counted["consequent"])]
    result["top_rules_evaluated"] = len(lifts)
    if lifts:
        result["top_rules_median_holdout_lift"] = float(np.median(lifts))
        result["top_rules_median_confidence_ratio"] = float(np.median(ratios))
    elif n_test >= HOLDOUT_MIN_RULE_BASKETS:
        notes.append(f"no rule's confidence predicts {HOLDOUT_MIN_EXPECTED_RULE_BASKETS} held-out baskets with its items:"
                     " too few held-out baskets to check the rules")
    result["holdout_note"] = "; ".join(notes)
    return result


def _training_favourites(customer_ids: pd.Index, products: pd.DataFrame) -> pd.DataFrame:
    """The customers `customer_ids` (customer_id, favourite_category, marketing_opt_in unknown), each
    favouring the category of most of their baskets in `products` (ties: the first by name)."""
    import pandas as pd
    per = products.groupby(["customer_id", "category"], observed=True)["basket_id"].nunique().rename("baskets").reset_index()
    first = per.sort_values(["customer_id", "baskets", "category"], ascending=[True, False, True],
                            kind="mergesort").drop_duplicates("customer_id")
    favourite = pd.Series(first["category"].astype(str).to_numpy(), index=first["customer_id"].astype(str).to_numpy())
    return pd.DataFrame({"customer_id": customer_ids, "favourite_category": customer_ids.map(favourite).astype(object),
                         "marketing_opt_in": None})


def _baseline_hits(ranked_skus: np.ndarray, customers: pd.Index, history: pd.DataFrame, bought_later: pd.DataFrame,
                   k: int) -> tuple[int, int]:
    """The baseline: each customer offered the k best sellers they had not bought. Returns the
    customers with at least one of them bought later, and the offers bought later."""
    import numpy as np
    import pandas as pd

    # A customer's k offers come from the first k + (best sellers they bought) of the ranking.
    depth = min(len(ranked_skus), k + int(history.groupby("customer_id").size().max() if len(history) else 0))
    top = pd.Index(ranked_skus[:depth])

    def positions(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        who = customers.get_indexer(_as_text(frame["customer_id"]))
        where = top.get_indexer(_as_text(frame["item"]))
        keep = (who >= 0) & (where >= 0)
        return who[keep], where[keep]

    bought = np.zeros((len(customers), depth), dtype=bool)
    bought[positions(history)] = True
    later = np.zeros((len(customers), depth), dtype=bool)
    later[positions(bought_later)] = True
    offered = ~bought & (np.cumsum(~bought, axis=1) <= k)
    hits = offered & later
    return int(hits.any(axis=1).sum()), int(hits.sum())


def count_rules(rules: pd.DataFrame, baskets: pd.DataFrame) -> pd.DataFrame:
    """`rules` (with antecedent and consequent as published) counted on other baskets (basket_id,
    item): holdout_antecedent_baskets, holdout_consequent_baskets, holdout_rule_baskets,
    holdout_baskets, holdout_confidence and holdout_lift (NaN where undefined)."""
    import numpy as np
    basket_codes, basket_labels = _codes(baskets["basket_id"].to_numpy())
    item_codes, labels = _codes(_as_text(baskets["item"]))
    by_item = _basket_matrix(basket_codes, item_codes, len(basket_labels), len(labels)).tocsc()
    by_item.sort_indices()
    position = {label: code for code, label in enumerate(labels.tolist())}
    nothing = np.empty(0, dtype=by_item.indices.dtype)

    def holders(item: str) -> np.ndarray:
        code = position.get(item)
        return nothing if code is None else by_item.indices[by_item.indptr[code]:by_item.indptr[code + 1]]

    counts = []
    for antecedent, consequent in zip(rules["antecedent"], rules["consequent"]):
        parts = antecedent.split(ITEM_SEPARATOR)
        has_a = holders(parts[0])
        for part in parts[1:]:
            has_a = _intersect(has_a, holders(part))
        has_c = holders(consequent)
        counts.append((len(has_a), len(has_c), len(_intersect(has_a, has_c))))
    a, c, ac = (np.asarray(values, dtype=float).reshape(-1) for values in zip(*counts)) if counts else (np.empty(0),) * 3
    n = len(basket_labels)
    with np.errstate(divide="ignore", invalid="ignore"):
        confidence = np.where(a > 0, ac / a, np.nan)
        lift = np.where((a > 0) & (c > 0), ac * n / (a * c), np.nan)
    return rules.assign(holdout_antecedent_baskets=a.astype(np.int64), holdout_consequent_baskets=c.astype(np.int64),
                        holdout_rule_baskets=ac.astype(np.int64), holdout_baskets=n, holdout_confidence=confidence,
                        holdout_lift=lift)


def _empty(columns: Sequence[str]) -> pd.DataFrame:
    import pandas as pd
    return pd.DataFrame({column: pd.Series(dtype=object) for column in columns})


__all__ = [
    "AssociationFit", "AssociationSettings", "BadParameter", "Itemsets", "association_rules", "best_sellers", "count_rules",
    "fit", "frequent_itemsets", "item_text", "mine_rules", "min_count_for", "next_best_offers", "score", "support_threshold",
]
