"""RFM segmentation: score recency, frequency and monetary value in quintiles and name segments."""

from __future__ import annotations

import datetime as dt

import pandas as pd

MODEL_NAME = "rfm_segmentation"
MODEL_VERSION = "rfm-quintiles-1"

# (segment, rule on the 1-5 scores); the first rule that holds names the segment.
_SEGMENT_RULES: list[tuple[str, str]] = [
    ("champions", "r_score >= 4 and f_score >= 4"),
    ("new_customers", "r_score >= 4 and f_score <= 1"),
    ("loyal", "f_score >= 4"),
    ("at_risk", "r_score <= 2 and f_score >= 3"),
    ("hibernating", "r_score <= 2"),
    ("promising", "r_score >= 3"),
]
_FALLBACK_SEGMENT = "needs_attention"


def _quintile(values: pd.Series, ascending: bool) -> pd.Series:
    """Score 1-5 by rank; ties broken by row order (callers sort by key) so scores are stable."""
    ranks = values.rank(method="first", ascending=ascending)
    return (((ranks - 1) * 5) // len(values) + 1).astype("int64")


def score_rfm(features: pd.DataFrame) -> pd.DataFrame:
    """Add r_score, f_score, m_score (5 = best) and rfm_segment to RFM features.

    `features` needs customer_id, recency_days, frequency and monetary, one row per customer.
    """
    missing = {"customer_id", "recency_days", "frequency", "monetary"} - set(features.columns)
    if missing:
        raise ValueError(f"RFM features: missing column(s) {', '.join(sorted(missing))}")
    scored = features.sort_values("customer_id").reset_index(drop=True)
    if scored.empty:
        # The dtypes of a scored frame, so a day without customers publishes the same columns.
        scores = {name: pd.Series(dtype="int64") for name in ("r_score", "f_score", "m_score")}
        return scored.assign(**scores, rfm_segment=pd.Series(dtype="str"))
    scored["r_score"] = _quintile(scored["recency_days"], ascending=False)
    scored["f_score"] = _quintile(scored["frequency"], ascending=True)
    scored["m_score"] = _quintile(scored["monetary"], ascending=True)
    scored["rfm_segment"] = _FALLBACK_SEGMENT
    unassigned = pd.Series(True, index=scored.index)
    for segment, rule in _SEGMENT_RULES:
        hit = unassigned & scored.eval(rule)
        scored.loc[hit, "rfm_segment"] = segment
        unassigned &= ~hit
    return scored


def segment_customers(features: pd.DataFrame, as_of_date: dt.date, run_id: str) -> tuple[pd.DataFrame, dict]:
    """Segments for `as_of_date`, every row stamped with run, date and model version, and the
    run's metrics (customers scored, share of each segment)."""
    scored = score_rfm(features)
    result = pd.DataFrame(
        {
            "customer_id": scored["customer_id"].astype("string"),
            "as_of_date": pd.Timestamp(as_of_date),
            "recency_days": scored["recency_days"].astype("int64"),
            "frequency": scored["frequency"].astype("int64"),
            "monetary": scored["monetary"].astype("float64"),
            "r_score": scored["r_score"],
            "f_score": scored["f_score"],
            "m_score": scored["m_score"],
            "rfm_segment": scored["rfm_segment"].astype("string"),
            "run_id": run_id,
            "model_version": MODEL_VERSION,
        }
    )
    shares = result["rfm_segment"].value_counts(normalize=True).sort_index()
    metrics = {
        "customers_scored": int(len(result)),
        "segment_share": {str(segment): round(float(share), 6) for segment, share in shares.items()},
    }
    return result, metrics
