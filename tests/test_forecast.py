"""The sales forecast on synthetic daily sales (seconds): the weekday pattern and a trend are
recovered, the forecast beats the seasonal-naive baseline on noisy data with an 80% interval that
covers about 80% of the backtest's days, days without sales count as zero, nothing after the as-of
date is read, and the outputs are deterministic and shaped as declared."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd
import pytest

from ml_tasks import forecast
from ml_tasks.contract import BadParameter, InsufficientData

AS_OF = dt.date(2025, 6, 30)
# Monday first, as pandas counts weekdays: the simulator's shape, 1 + 0.15 sin(2 pi (weekday - 2) / 7).
PLANTED = 1 + 0.15 * np.sin(2 * np.pi * (np.arange(7) - 2) / 7)


def sales(days: int = 365, levels: dict[str, float] | None = None, trend_per_day: float = 0.0,
          noise: float = 0.0, seed: int = 0, end: dt.date = AS_OF) -> pd.DataFrame:
    """kpi_daily_sales rows ending on `end`: per category, level x planted weekday factor (+ trend),
    with lognormal noise of sigma `noise`, split over two channels."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range(end=pd.Timestamp(end), periods=days, freq="D")
    rows = []
    for category, level in (levels or {"books": 1000.0, "toys": 300.0}).items():
        mean = (level + trend_per_day * np.arange(days)) * PLANTED[dates.day_of_week]
        revenue = mean * np.exp(noise * rng.standard_normal(days) - noise ** 2 / 2)
        for channel, share in (("web", 0.6), ("store", 0.4)):
            rows.append(pd.DataFrame({"sales_date": dates, "channel": channel, "category": category,
                                      "revenue": np.round(revenue * share, 2), "order_count": 10}))
    return pd.concat(rows, ignore_index=True)


def run(frame: pd.DataFrame, as_of: dt.date = AS_OF, **settings) -> tuple[dict[str, pd.DataFrame], dict]:
    return forecast.run({forecast.SALES: frame}, as_of, forecast.ForecastSettings(**settings))


def test_weekday_factors_recover_the_planted_pattern() -> None:
    series = forecast.daily_series(sales(days=140), AS_OF, 365)
    factors = forecast.weekday_factors(series["books"].to_numpy(), np.asarray(series.index.day_of_week), 182.0)
    assert np.allclose(factors, PLANTED / PLANTED.mean(), atol=0.005)


def test_a_noiseless_trend_and_weekday_pattern_are_forecast_exactly() -> None:
    results, _ = run(sales(days=200, levels={"books": 1000.0}, trend_per_day=2.0), trend_damping=1.0)
    books = results[forecast.FORECAST].query("category == 'books'")
    days_ahead = np.arange(200, 228)
    expected = (1000.0 + 2.0 * days_ahead) * PLANTED[books["forecast_date"].dt.day_of_week.to_numpy()]
    assert np.allclose(books["predicted_revenue"].to_numpy(), expected, rtol=0.01)


def test_the_forecast_beats_seasonal_naive_with_an_interval_covering_about_80_percent() -> None:
    _, metrics = run(sales(days=365, noise=0.2, trend_per_day=-0.5, seed=3))
    assert metrics["backtest_origins"] == 45 and metrics["calibrated_origins"] >= 30
    assert metrics["smape_model"] < metrics["smape_naive"]
    assert metrics["mae_model"] < metrics["mae_naive"]
    assert metrics["smape_gain_over_naive"] >= 0.2
    assert 0.75 <= metrics["interval_coverage"] <= 0.85
    assert 0.75 <= metrics["total_coverage_model"] <= 0.85
    for metric, floor in forecast.QUALITY_FLOORS.items():
        assert metrics[metric] >= floor


def test_the_outputs_have_the_declared_columns_one_row_per_day_ahead_and_ordered_bounds() -> None:
    results, metrics = run(sales(noise=0.2))
    table = results[forecast.FORECAST]
    assert list(table.columns) == list(forecast.FORECAST_COLUMNS)
    assert sorted(table["category"].unique()) == ["all", "books", "toys"]
    assert len(table) == 3 * 28
    first = table.query("category == 'books'").iloc[0]
    assert first["forecast_date"] == pd.Timestamp(AS_OF + dt.timedelta(days=1)) and first["horizon_days"] == 1
    assert (table["lower_80"] <= table["predicted_revenue"]).all() and (table["predicted_revenue"] <= table["upper_80"]).all()
    assert (table["lower_80"] >= 0).all()
    backtest = results[forecast.BACKTEST]
    assert list(backtest.columns) == list(forecast.BACKTEST_COLUMNS)
    pooled = backtest.set_index(["method", "category", "metric"])["value"]
    assert pooled[forecast.MODEL_METHOD, "categories_pooled", "smape"] == metrics["smape_model"]
    assert pooled[forecast.NAIVE_METHOD, "all", "coverage_80"] == metrics["total_coverage_naive"]


def test_the_total_is_forecast_as_its_own_series_not_a_sum_of_intervals() -> None:
    table = run(sales(noise=0.3, seed=5))[0][forecast.FORECAST]
    by_day = table.pivot(index="forecast_date", columns="category", values=["predicted_revenue", "upper_80"])
    summed_width = by_day["upper_80"][["books", "toys"]].sum(axis=1) - by_day["predicted_revenue"][["books", "toys"]].sum(axis=1)
    total_width = by_day["upper_80"]["all"] - by_day["predicted_revenue"]["all"]
    assert np.allclose(by_day["predicted_revenue"]["all"], by_day["predicted_revenue"][["books", "toys"]].sum(axis=1), rtol=0.05)
    assert (total_width < summed_width).all()


def test_days_without_a_sale_count_as_zero_revenue() -> None:
    frame = sales(days=120, levels={"books": 1000.0, "toys": 300.0})
    dropped = (frame["category"] == "toys") & (frame["sales_date"].dt.day % 5 == 0)
    _, metrics = run(frame[~dropped])
    series = forecast.daily_series(frame[~dropped], AS_OF, 365)
    assert len(series) == 120 and metrics["history_days"] == 120
    assert metrics["zero_revenue_days"] == (series["toys"] == 0).sum() > 0
    assert series["all"].sum() == pytest.approx(frame.loc[~dropped, "revenue"].sum())


def test_a_weekday_without_sales_is_forecast_as_zero() -> None:
    frame = sales(noise=0.1)
    closed = frame["sales_date"].dt.day_of_week == 6
    table = run(frame[~closed])[0][forecast.FORECAST]
    sundays = table["forecast_date"].dt.day_of_week == 6
    assert (table.loc[sundays, ["predicted_revenue", "upper_80"]] == 0).all().all()
    assert (table.loc[~sundays, "predicted_revenue"] > 0).all() and table.notna().all().all()


def test_sales_after_the_as_of_date_and_before_the_window_are_not_read() -> None:
    frame = sales(days=500, noise=0.2, end=AS_OF + dt.timedelta(days=30))
    results, metrics = run(frame, window_days=300)
    known = frame["sales_date"].between(pd.Timestamp(AS_OF - dt.timedelta(days=299)), pd.Timestamp(AS_OF))
    cut = frame[known]
    again, metrics_again = run(cut.sample(frac=1.0, random_state=1), window_days=300)
    assert metrics["history_days"] == 300 and metrics == {**metrics_again, "input_rows": metrics["input_rows"]}
    pd.testing.assert_frame_equal(results[forecast.FORECAST], again[forecast.FORECAST])


def test_the_same_sales_in_another_row_order_give_the_same_outputs() -> None:
    frame = sales(noise=0.2, seed=7)
    first, metrics = run(frame)
    second, metrics_again = run(frame.sample(frac=1.0, random_state=2).reset_index(drop=True))
    assert metrics == metrics_again
    for table in (forecast.FORECAST, forecast.BACKTEST):
        pd.testing.assert_frame_equal(first[table], second[table])


def test_too_short_a_history_is_insufficient_data() -> None:
    with pytest.raises(InsufficientData, match="55 days of sales.*at least 56"):
        run(sales(days=55))
    with pytest.raises(InsufficientData, match="0 days of sales"):
        run(sales(days=100).iloc[0:0])
    with pytest.raises(InsufficientData, match="at least 119"):
        run(sales(days=100), horizon_days=91)


def test_a_short_history_is_forecast_without_judging_the_floors() -> None:
    results, metrics = run(sales(days=56, noise=0.2))
    assert metrics["backtest_origins"] == 1 and metrics["calibrated_origins"] == 0
    assert metrics["smape_gain_over_naive"] is None and metrics["interval_coverage"] is None
    assert len(results[forecast.FORECAST]) == 3 * 28


def test_settings_change_the_horizon_and_are_checked() -> None:
    table = run(sales(noise=0.2), horizon_days=14)[0][forecast.FORECAST]
    assert table["horizon_days"].max() == 14 and len(table) == 3 * 14
    with pytest.raises(BadParameter, match="trend_damping: got 1.5, expected between 0.0 and 1.0"):
        forecast.ForecastSettings(trend_damping=1.5)
    with pytest.raises(BadParameter, match="horizon_days: got 0"):
        forecast.ForecastSettings(horizon_days=0)
    for setting in dataclasses.fields(forecast.ForecastSettings):
        assert setting.metadata["doc"].startswith("sales_forecast: ")


def test_a_missing_column_is_named() -> None:
    with pytest.raises(ValueError, match="marts.kpi_daily_sales: missing column 'revenue'"):
        run(sales(days=60).drop(columns="revenue"))
