"""Acceptance on simulator truth: the behavioural clusters rediscover the personas the simulator
planted. The shared `truth_warehouse` (tests/conftest.py: 4,000 customers over 13 months, seed 3,
built by dbt on DuckDB for the last day); the segments are fitted and scored on the feature tables
read through warehouse_io as the DAG does, with the default settings (k chosen in 4-8 by Davies-Bouldin). Each
customer takes the persona of the majority of the people behind its records (tests/truth.py;
customers without a majority are dropped); among customers with
at least 3 orders, the adjusted Rand index of clusters vs personas must reach 0.6. Beside it, the
ceiling: a classifier trained on the personas with the same features, cross-validated."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import cross_val_predict

from ml_tasks import clustering
from ml_tasks.registry import model
from ml_tasks.warehouse_io import read_input
from tests.conftest import TRUTH_CUSTOMERS, TRUTH_LAST_DAY
from tests.truth import person_of_customer
from warehouse import connect

MINIMUM_ARI = 0.6


def test_clusters_recover_the_simulated_personas(truth_warehouse: tuple[str, Path]) -> None:
    url, sources = truth_warehouse
    timings: dict[str, float] = {}
    started = time.perf_counter()
    spec = model("customer_segments")
    with connect(url) as warehouse:
        inputs = {table.name: read_input(warehouse, table, TRUTH_LAST_DAY) for table in spec.reads}
    settings = spec.settings()
    fitted, metrics = clustering.fit(inputs, TRUTH_LAST_DAY, settings)
    results, _ = clustering.score(fitted, inputs, TRUTH_LAST_DAY, settings)
    timings["clustering"] = time.perf_counter() - started

    personas = person_of_customer(url, sources / "truth")["persona"]
    segments = results[clustering.SEGMENTS].set_index("customer_id")
    judged = segments[(segments["frequency"] >= 3) & segments.index.isin(personas.index)]
    truth = personas[judged.index].to_numpy()
    ari = adjusted_rand_score(truth, judged["cluster_id"].to_numpy())

    # The ceiling: the same features, standardised, with the personas as labels (5-fold CV).
    buyers = clustering._buyers(inputs[clustering.FEATURES])
    raw, _ = clustering.feature_matrix(buyers, inputs[clustering.CATEGORY_MIX], settings)
    points = clustering.FeatureSpace.fit(raw).standardise(raw)
    rows = np.flatnonzero(buyers["customer_id"].isin(judged.index).to_numpy())
    labels = personas[buyers["customer_id"].iloc[rows]].to_numpy()
    predicted = cross_val_predict(LogisticRegression(max_iter=2000), points[rows], labels, cv=5)
    ceiling = adjusted_rand_score(labels, predicted)
    timings["ceiling"] = time.perf_counter() - started - sum(timings.values())

    crosstab = pd.crosstab(judged["cluster_label"].to_numpy(), truth)
    print(f"\nclusters vs personas, {len(judged)} customers with >= 3 orders: ARI {ari:.3f} (k = {metrics['k']}),"
          f" supervised ceiling {ceiling:.3f}; held-out silhouette {metrics['heldout_silhouette']},"
          f" inertia reduction {metrics['heldout_inertia_reduction']}; seconds {({k: round(v, 1) for k, v in timings.items()})}")
    print(crosstab.to_string())
    assert len(judged) >= 0.5 * TRUTH_CUSTOMERS
    assert ari >= MINIMUM_ARI, crosstab.to_string()
    assert ceiling >= ari  # sanity: the labels teach more than the clusters find
    for name, floor in spec.quality_floors.items():
        assert metrics[name] >= floor, name
