"""Association mining on Spark (ml_tasks/association_spark.py, MLlib's FPGrowth on a local[2]
session from warehouse/spark.py): the same itemsets and counts as the single-machine path
(ml_tasks/association.py) on hand-made baskets (a support boundary, repeated items), on generated
long-tail baskets and on the shared Weka supermarket baskets; the same rules from them.

One Spark session serves the module; it needs pyspark and a Java runtime, and the tests that use
it are skipped, saying which is missing, without them (the threshold's arithmetic runs anyway)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml_tasks.association import AssociationSettings, association_rules, frequent_itemsets, min_count_for, mine_rules
from tests.test_association import HAND, long_form, weka_baskets
from tests.spark_support import module_spark_session

pytestmark = [
    pytest.mark.spark,
    # pyspark 4.3 warns at its first pandas check that it does not fully support pandas 3: the rows
    # here cross into Spark as Arrow tables and come back as Rows, no pandas conversion involved.
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    with module_spark_session(tmp_path_factory.mktemp("spark"), "test-association-spark", "the Spark association path") as session:
        yield session


def spark_rows(spark, basket_ids, items):
    """(basket_id, item) rows as a Spark DataFrame, items as text (None stays null), through Arrow:
    0.03 s a frame once warm, where a list of tuples took 2.5 s (measured on this module's data)."""
    import pyarrow as pa

    table = pa.table({"basket_id": pa.array(np.asarray(basket_ids, dtype=np.int64)),
                      "item": pa.array([None if item is None else str(item) for item in items], type=pa.string())})
    return spark.createDataFrame(table)


def both_paths(spark, frame: pd.DataFrame, min_count: int, max_length: int = 4, max_itemsets: int | None = None):
    from ml_tasks.association_spark import frequent_itemsets_spark

    single = frequent_itemsets(frame["basket_id"].to_numpy(), frame["item"].astype(str).to_numpy(), min_count,
                               max_length, max_itemsets)
    on_spark = frequent_itemsets_spark(spark_rows(spark, frame["basket_id"], frame["item"]), min_count, max_length,
                                       max_itemsets)
    return single, on_spark


# ---- the threshold: FPGrowth's share for an integer count -----------------------------------------


def test_the_share_given_to_fpgrowth_gives_back_exactly_the_min_count_for_every_count_up_to_1000_baskets():
    from ml_tasks.association_spark import fpgrowth_min_support

    for baskets in range(1, 1001):
        counts = np.arange(1, baskets + 1)
        # FPGrowth's own arithmetic (mllib FPGrowth.run): ceil(minSupport * n) in doubles.
        threshold = np.ceil(np.asarray([fpgrowth_min_support(int(m), baskets) for m in counts]) * baskets)
        assert (threshold == counts).all(), baskets
    # Why not count / baskets: 7 / 25 * 25 is 7.000000000000001, whose ceiling is 8.
    assert math.ceil(7 / 25 * 25) == 8
    for baskets in (10**6, 12_345_678, 10**9):
        for m in (1, 7, 300, 694, baskets // 3, baskets - 1, baskets):
            assert math.ceil(fpgrowth_min_support(m, baskets) * baskets) == m


# ---- hand-made baskets -------------------------------------------------------------------------------


def test_hand_made_itemsets_equal_the_single_machine_and_the_hand_counts(spark):
    single, on_spark = both_paths(spark, long_form(HAND), min_count=2)
    assert on_spark.as_dict() == single.as_dict() == {
        frozenset("A"): 5, frozenset("B"): 5, frozenset("C"): 4, frozenset("D"): 3,
        frozenset("AB"): 3, frozenset("AC"): 3, frozenset("BC"): 3, frozenset("ABC"): 3}
    assert (on_spark.baskets, on_spark.min_count, on_spark.support_raised) == (8, 2, 0)


def test_an_itemset_in_exactly_min_count_baskets_is_kept_where_a_naive_share_would_drop_it(spark):
    """25 baskets, min_count 7: 7/25 as FPGrowth's share asks for ceil(7.000000000000001) = 8
    baskets. x + y is in exactly 7 baskets, x + z in 6."""
    from pyspark.ml.fpm import FPGrowth
    from pyspark.sql import functions as F

    from ml_tasks.association_spark import mine_rules_spark

    baskets = {b: ["x", "y"] for b in range(7)} | {b: ["x", "z"] for b in range(7, 13)} | {
        b: ["w"] for b in range(13, 25)}
    frame = long_form(baskets)
    single, on_spark = both_paths(spark, frame, min_count=7)
    assert on_spark.as_dict() == single.as_dict() == {frozenset("x"): 13, frozenset("y"): 7, frozenset("w"): 12,
                                                      frozenset("xy"): 7}
    rows = spark_rows(spark, frame["basket_id"], frame["item"])
    naive = FPGrowth(itemsCol="items", minSupport=7 / 25).fit(rows.groupBy("basket_id").agg(F.collect_set("item").alias("items")))
    assert {frozenset(row["items"]) for row in naive.freqItemsets.collect()} == {frozenset("x"), frozenset("w")}
    # The settings' share reaches the same count on both paths.
    settings = AssociationSettings(min_support=7 / 25, min_confidence=0, min_lift=0)
    assert mine_rules_spark(rows, settings)[1].min_count == mine_rules(frame, settings)[1].min_count == 7


def test_repeated_items_in_a_basket_count_once_as_on_the_single_machine(spark):
    frame = long_form(HAND)
    doubled = pd.concat([frame, frame.iloc[::2]], ignore_index=True)
    single, on_spark = both_paths(spark, doubled, min_count=2)
    assert on_spark.as_dict() == single.as_dict() == frequent_itemsets(frame["basket_id"], frame["item"], 2).as_dict()


def test_a_null_item_is_refused_naming_the_column(spark):
    from ml_tasks.association_spark import frequent_itemsets_spark

    rows = spark_rows(spark, [1, 1, 2], ["a", None, "a"])
    with pytest.raises(ValueError, match="null in 'basket_id' or 'item'.*null 'item' in 1 baskets"):
        frequent_itemsets_spark(rows, 1)


def test_a_min_count_above_the_baskets_finds_nothing(spark):
    single, on_spark = both_paths(spark, long_form(HAND), min_count=9)
    assert on_spark.as_dict() == single.as_dict() == {}
    assert on_spark.baskets == 8


# ---- generated long-tail baskets ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_tail() -> pd.DataFrame:
    from bench.association import synthetic_baskets

    basket_ids, items = synthetic_baskets(4000, 300, seed=3, planted=((5, 0.05), (4, 0.04), (3, 0.05), (2, 0.06)))
    return pd.DataFrame({"basket_id": basket_ids, "item": [f"sku{item:03d}" for item in items.tolist()]})


def test_long_tail_itemsets_equal_the_single_machine_up_to_max_length(spark, long_tail):
    single, on_spark = both_paths(spark, long_tail, min_count=12, max_length=4)
    assert max(single.by_size()) == 4  # the planted five-item group is cut at max_length on both paths
    assert on_spark.by_size() == single.by_size()
    assert on_spark.as_dict() == single.as_dict()
    assert on_spark.baskets == single.baskets == 4000


def test_the_itemset_cap_raises_the_support_as_the_single_machine_does(spark, long_tail):
    single, on_spark = both_paths(spark, long_tail, min_count=12, max_length=4, max_itemsets=150)
    assert single.support_raised >= 1
    assert (on_spark.min_count, on_spark.support_raised) == (single.min_count, single.support_raised)
    assert on_spark.as_dict() == single.as_dict()


def test_rules_from_spark_itemsets_equal_the_single_machine_rules(spark, long_tail):
    from ml_tasks.association_spark import mine_rules_spark

    settings = AssociationSettings(min_support=12 / 4000, min_confidence=0.2, min_lift=1.5)
    single, _ = mine_rules(long_tail, settings)
    on_spark, _ = mine_rules_spark(spark_rows(spark, long_tail["basket_id"], long_tail["item"]), settings)
    assert len(single) > 10
    pd.testing.assert_frame_equal(on_spark, single)


# ---- the Weka supermarket baskets (../shared) -----------------------------------------------------------


@pytest.fixture(scope="module")
def supermarket() -> pd.DataFrame:
    return long_form(weka_baskets())  # skips, naming the file, when the shared folder is absent


def test_supermarket_itemsets_equal_the_single_machine_at_support_694_of_4627(spark, supermarket):
    min_count = min_count_for(694 / 4627, 4627)
    single, on_spark = both_paths(spark, supermarket, min_count=min_count, max_length=10)
    assert on_spark.min_count == 694
    assert on_spark.by_size() == single.by_size() == {1: 44, 2: 380, 3: 910, 4: 633, 5: 105, 6: 1}
    assert on_spark.as_dict() == single.as_dict()
    # The rules (unpruned, every rule of the itemsets) follow from equal itemsets unchanged.
    pd.testing.assert_frame_equal(association_rules(on_spark, 0.9, 0, prune=False),
                                  association_rules(single, 0.9, 0, prune=False))


# ---- the session -------------------------------------------------------------------------------------------


def test_the_session_is_local_with_its_metastore_and_warehouse_under_its_folder(spark):
    conf = spark.sparkContext.getConf()
    assert conf.get("spark.master") == "local[2]"
    assert conf.get("spark.ui.enabled") == "false"
    derby_home = spark.sparkContext._jvm.java.lang.System.getProperty("derby.system.home")
    warehouse = conf.get("spark.sql.warehouse.dir")
    assert Path(derby_home).is_dir() and Path(derby_home).name.startswith("spark")
    assert Path(warehouse.removeprefix("file:")).parent == Path(derby_home)
    assert f"databaseName={Path(derby_home) / 'metastore_db'};" in conf.get("spark.hadoop.javax.jdo.option.ConnectionURL")
