"""Watching models after they are trained: population stability of scores and features (drift).

Pure numpy; a model module calls `drift_report` in its `score` with the reference values it kept
from training, and returns the result as `metrics["drift_psi"]`. The task logs a warning for every
entry above DRIFT_WARNING.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

# The usual reading of the population stability index: below 0.1 stable, 0.1-0.2 a moderate
# shift, above 0.2 a shift worth a look (Siddiqi, Credit Risk Scorecards, 2006).
DRIFT_WARNING = 0.2
# Reference values kept per column: enough for ten deciles to be estimated to about 1%.
REFERENCE_SAMPLE = 10_000


def reference_sample(values: "np.ndarray", size: int = REFERENCE_SAMPLE, seed: int = 0) -> np.ndarray:
    """At most `size` finite values drawn without replacement (seeded): what a fitted model keeps of
    a training column to measure drift against."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) <= size:
        return np.sort(values)
    return np.sort(np.random.default_rng(seed).choice(values, size, replace=False))


def population_stability_index(reference: "np.ndarray", current: "np.ndarray", bins: int = 10) -> float | None:
    """PSI = sum over bins of (current share - reference share) * ln(current share / reference share),
    bins at the reference's deciles (fewer when values repeat: a count feature with three values
    gets three bins). Shares are floored at 0.0001 so an empty bin counts without dividing by zero.
    None when either side has no finite value."""
    reference = np.asarray(reference, dtype=float)
    current = np.asarray(current, dtype=float)
    reference = reference[np.isfinite(reference)]
    current = current[np.isfinite(current)]
    if not len(reference) or not len(current):
        return None
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    # Right-closed bins: a value equal to an edge falls in the bin the edge closes, on both sides.
    reference_share = np.bincount(np.searchsorted(edges, reference, side="left"), minlength=len(edges) + 1) / len(reference)
    current_share = np.bincount(np.searchsorted(edges, current, side="left"), minlength=len(edges) + 1) / len(current)
    reference_share = np.maximum(reference_share, 1e-4)
    current_share = np.maximum(current_share, 1e-4)
    return float(np.sum((current_share - reference_share) * np.log(current_share / reference_share)))


def drift_report(reference: Mapping[str, "np.ndarray"], current: Mapping[str, "np.ndarray"]) -> dict[str, float | None]:
    """PSI of each column present in both, rounded to 4 decimals: {column: psi}."""
    report = {}
    for column, values in reference.items():
        if column in current:
            psi = population_stability_index(values, current[column])
            report[column] = None if psi is None else round(psi, 4)
    return report
