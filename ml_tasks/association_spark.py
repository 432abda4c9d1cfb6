"""Frequent itemsets on Apache Spark (MLlib's FPGrowth): the association path when the warehouse is
Spark. It returns the single-machine path's `Itemsets` (ml_tasks/association.py), so
`association_rules` and everything after it run unchanged, and on the same baskets with the same
settings it finds the same itemsets with the same counts (tests/test_association_spark.py).

pyspark is imported here alone, and only inside the functions: the rest of the project runs
without Spark.

How the single-machine path's settings map onto FPGrowth:
- Threshold: the single machine keeps an itemset in at least `min_count` baskets (an integer).
  FPGrowth takes a share, `minSupport`, and keeps itemsets with freq >= ceil(minSupport x n), n
  the baskets it counted (Spark's mllib FPGrowth.run; its doc says "more than", its code is >=).
  We pass minSupport = (min_count - 0.5) / n: half a basket below the boundary, so the ceiling is
  min_count whatever the rounding of the division (min_count / n itself can come back a hair above
  min_count once multiplied, and the ceiling then keeps one basket too few).
- Baskets: FPGrowth wants each basket's items distinct (it fails on a repeated item); the rows
  (basket id, item) are grouped into baskets with `collect_set`, so a duplicate row counts once,
  as on the single machine. Null basket ids or items are refused, naming the column: the single
  machine has no meaning for them either.
- Length: FPGrowth has no maximum itemset length; it mines every length and the itemsets longer
  than `max_length` are dropped from its output. On dense baskets at a low support the long
  itemsets are most of its work: that cost is Spark's, not a difference in the result.
- `max_itemsets`: the single machine stops mining when a level passes the cap and mines again
  with a threshold 1.5x higher until the itemsets (up to max_length) fit. FPGrowth cannot stop
  early; raising the threshold only removes itemsets, so the loop runs on a histogram of its
  output (itemsets up to max_length per count, a small collect) and the same thresholds follow,
  with `support_raised` and the `min_count` used as the single machine reports them.
- Items: `mine_rules_spark` mines the items as text, as `mine_rules` does; `labels` hold the
  frequent items alone, sorted (an infrequent item is in no itemset), so item codes differ from the
  single machine's while the itemsets' labels and counts are equal (`Itemsets.as_dict`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from ml_tasks.association import (
    SUPPORT_RAISE,
    AssociationSettings,
    Itemsets,
    association_rules,
    support_threshold,
)

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession


def frequent_itemsets_spark(rows: DataFrame, min_count: int, max_length: int = 4, max_itemsets: int | None = None,
                            basket_column: str = "basket_id", item_column: str = "item",
                            partitions: int | None = None) -> Itemsets:
    """Itemsets in at least `min_count` baskets, up to `max_length` items, from a Spark DataFrame
    of (basket id, item) rows (duplicates count once), mined by FPGrowth on the rows' session:
    what `frequent_itemsets` returns for the same rows. `partitions`: FPGrowth's numPartitions
    (default: those of the grouped baskets)."""
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count: expected an integer of at least 1 (baskets), got {min_count!r}")
    return _mine(rows, lambda baskets: min_count, max_length, max_itemsets, basket_column, item_column, partitions)


def mine_rules_spark(rows: DataFrame, settings: AssociationSettings, item_level: str = "product", prune: bool = True,
                     basket_column: str = "basket_id", item_column: str = "item",
                     partitions: int | None = None) -> tuple[pd.DataFrame, Itemsets]:
    """`mine_rules` on Spark: rules of one level from (basket id, item) rows, the support threshold,
    itemset length and cap read from `settings` as the single machine reads them. Returns the
    rules (RULE_COLUMNS, a pandas frame: rules are few) and the itemsets they came from."""
    from pyspark.sql import functions as F

    as_text = rows.select(F.col(basket_column), F.col(item_column).cast("string").alias(item_column))
    itemsets = _mine(as_text, lambda baskets: support_threshold(settings, baskets), settings.max_itemset_length,
                     settings.max_itemsets, basket_column, item_column, partitions)
    rules = association_rules(itemsets, settings.min_confidence, settings.min_lift, prune, item_level)
    return rules, itemsets


def mine_frame_rules_spark(spark: SparkSession, baskets: pd.DataFrame, settings: AssociationSettings,
                           item_level: str = "product", prune: bool = True) -> tuple[pd.DataFrame, Itemsets]:
    """`mine_rules`'s call on `spark`: one level's rows of a pandas frame (basket_id and item, as
    the model holds its window) mined by `mine_rules_spark`, the same rules and itemsets. The rows
    reach the session as a parquet file in a temporary folder, as the warehouse adapter hands rows
    to Spark: through createDataFrame the driver held them whole (the adapter's _as_table_rows)."""
    import tempfile
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    # Categorical columns stay codes and their categories (parquet's dictionary pages).
    rows = pa.Table.from_pandas(baskets[["basket_id", "item"]], preserve_index=False)
    with tempfile.TemporaryDirectory(prefix="crmw-association-") as folder:
        pq.write_table(rows, Path(folder) / "baskets.parquet")
        return mine_rules_spark(spark.read.parquet(folder), settings, item_level, prune)


def fpgrowth_min_support(min_count: int, baskets: int) -> float:
    """FPGrowth's minSupport that makes its count threshold, ceil(minSupport x baskets), exactly
    `min_count` (1 <= min_count <= baskets)."""
    if not 1 <= min_count <= baskets:
        raise ValueError(f"min_count: expected between 1 and the {baskets} baskets, got {min_count}")
    return (min_count - 0.5) / baskets


def _mine(rows: DataFrame, threshold: Callable[[int], int], max_length: int, max_itemsets: int | None,
          basket_column: str, item_column: str, partitions: int | None) -> Itemsets:
    from pyspark import StorageLevel
    from pyspark.ml.fpm import FPGrowth
    from pyspark.sql import functions as F

    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length: expected an integer of at least 1 (items), got {max_length!r}")
    if max_itemsets is not None and (not isinstance(max_itemsets, int) or max_itemsets < 1):
        raise ValueError(f"max_itemsets: expected an integer of at least 1 or None, got {max_itemsets!r}")
    missing = [column for column in (basket_column, item_column) if column not in rows.columns]
    if missing:
        raise ValueError(f"basket rows: expected columns {basket_column!r} and {item_column!r}, missing {missing}"
                         f" (columns: {rows.columns})")

    baskets = rows.groupBy(F.col(basket_column)).agg(
        F.collect_set(F.col(item_column)).alias("items"),
        F.max(F.col(item_column).isNull().cast("int")).alias("has_null_item"),
    )
    # Cached: counted here, then read by FPGrowth three times (its count, its frequent items, its
    # trees). Given this frame itself (it selects the items column), FPGrowth sees it cached and
    # does not cache a copy of its own, as it would for a projection of it.
    baskets = baskets.persist(StorageLevel.MEMORY_AND_DISK)
    frequent = None
    try:
        totals = baskets.agg(
            F.count(F.lit(1)).alias("baskets"),
            F.sum("has_null_item").alias("null_items"),
            F.sum(F.col(basket_column).isNull().cast("int")).alias("null_baskets"),
        ).first()
        if totals["null_baskets"] or totals["null_items"]:
            raise ValueError(f"basket rows: expected no null in {basket_column!r} or {item_column!r}; found"
                             f" {'a' if totals['null_baskets'] else 'no'} null {basket_column!r} and a null {item_column!r}"
                             f" in {totals['null_items'] or 0} baskets")
        n = int(totals["baskets"])
        min_count = int(threshold(n))
        if min_count > n:  # no itemset can reach it (and FPGrowth takes no share above 1)
            return _itemsets([], min_count, n, 0)
        miner = FPGrowth(itemsCol="items", minSupport=fpgrowth_min_support(min_count, n))
        if partitions is not None:
            miner = miner.setNumPartitions(partitions)
        model = miner.fit(baskets)
        frequent = model.freqItemsets.where(F.size("items") <= max_length)
        used, raised = min_count, 0
        if max_itemsets is not None:
            # Its itemsets are an RDD mined again by every action on them: kept for the two below.
            frequent = frequent.persist(StorageLevel.MEMORY_AND_DISK)
            histogram = {int(row["freq"]): int(row["count"]) for row in frequent.groupBy("freq").count().collect()}
            used, raised = _threshold_that_fits(histogram, min_count, max_itemsets)
        found = frequent.where(F.col("freq") >= used).collect()
        return _itemsets([(list(row["items"]), int(row["freq"])) for row in found], used, n, raised)
    finally:
        if frequent is not None:
            frequent.unpersist()
        baskets.unpersist()


def _threshold_that_fits(histogram: dict[int, int], min_count: int, max_itemsets: int) -> tuple[int, int]:
    """The single machine's cap, on counts: from `min_count`, raised 1.5x (rounded up) while more
    than `max_itemsets` itemsets reach it; `histogram` maps a count to the itemsets with it.
    Returns the threshold and how often it was raised."""
    raised = 0
    while sum(itemsets for count, itemsets in histogram.items() if count >= min_count) > max_itemsets:
        min_count = math.ceil(min_count * SUPPORT_RAISE)
        raised += 1
    return min_count, raised


def _itemsets(found: list[tuple[list, int]], min_count: int, baskets: int, raised: int) -> Itemsets:
    """`Itemsets` from (items, count) pairs: labels the sorted distinct items, each itemset its
    sorted codes, listed by size then codes (FPGrowth's order depends on its partitions)."""
    import numpy as np

    labels = sorted({item for items, _ in found for item in items})
    code = {label: position for position, label in enumerate(labels)}
    coded = sorted((tuple(sorted(code[item] for item in items)), count) for items, count in found)
    coded.sort(key=lambda pair: len(pair[0]))  # stable: codes order within a size
    return Itemsets(
        itemsets=[itemset for itemset, _ in coded],
        counts=np.asarray([count for _, count in coded], dtype=np.int64),
        labels=np.asarray(labels, dtype=object),
        baskets=baskets,
        min_count=min_count,
        support_raised=raised,
    )


__all__ = ["fpgrowth_min_support", "frequent_itemsets_spark", "mine_frame_rules_spark", "mine_rules_spark"]
