"""Acceptance on simulator truth: the sales forecast on the shared `truth_history` warehouse (two
years of 4,000 simulated customers, tests/conftest.py), as of its last day. The simulator plants a
weekly rhythm in every customer's order rate, 1 + 0.15 sin(2 pi (weekday - 2) / 7): the total's
weekday factors must be that rhythm; on the rolling-origin backtest the forecast must beat
seasonal naive (last week's same weekday) by the quality floor and its 80% interval cover 75-85%
of the days. Reads kpi_daily_sales directly: under a second once the fixture is built."""

from __future__ import annotations

import numpy as np

from ml_tasks import forecast
from tests.conftest import HISTORY_OUTCOME_DAY
from warehouse import connect

PLANTED = 1 + 0.15 * np.sin(2 * np.pi * (np.arange(7) - 2) / 7)


def test_the_forecast_finds_the_planted_week_and_beats_seasonal_naive_with_a_calibrated_interval(truth_history: dict) -> None:
    with connect(truth_history["at_outcome"]) as warehouse:
        sales = warehouse.fetch_df("select sales_date, channel, category, revenue, order_count from marts.kpi_daily_sales")
    results, metrics = forecast.run({forecast.SALES: sales}, HISTORY_OUTCOME_DAY, forecast.ForecastSettings())
    two_years = forecast.daily_series(sales, HISTORY_OUTCOME_DAY, 730)
    factors = forecast.weekday_factors(two_years[forecast.TOTAL].to_numpy(), np.asarray(two_years.index.day_of_week), 182.0)
    print(f"\nforecast on truth as of {HISTORY_OUTCOME_DAY}: {metrics['backtest_origins']} origins;"
          f" sMAPE {metrics['smape_model']:.3f} vs naive {metrics['smape_naive']:.3f}"
          f" (total {metrics['total_smape_model']:.3f} vs {metrics['total_smape_naive']:.3f}),"
          f" MAE {metrics['mae_model']:.0f} vs {metrics['mae_naive']:.0f}, coverage {metrics['interval_coverage']:.3f}"
          f" (total {metrics['total_coverage_model']:.3f}); weekday factors {np.round(factors, 3)}")
    assert np.abs(factors - PLANTED / PLANTED.mean()).max() < 0.03
    for metric, floor in forecast.QUALITY_FLOORS.items():
        assert metrics[metric] >= floor
    assert metrics["smape_gain_over_naive"] >= 0.15
    assert 0.75 <= metrics["interval_coverage"] <= 0.85
    assert metrics["mae_model"] < metrics["mae_naive"] and metrics["total_smape_model"] < metrics["total_smape_naive"]
    table = results[forecast.FORECAST]
    assert len(table) == (metrics["categories"] + 1) * 28 and (table["predicted_revenue"] > 0).all()
