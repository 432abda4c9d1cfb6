"""What every model shares: its spec (what it reads, writes and must reach), its settings, and the
three ways a run can stop short of publishing.

A model family is one pure module with
`run(inputs: dict[str, DataFrame], as_of_date: date, settings) -> (results, metrics)`: `inputs`
maps each table the spec reads to its rows for the as-of date (and `previous:<table>` to the
latest earlier as-of date's rows of a table the model wrote before); `results` maps each output
table to its rows, with the declared columns but without the stamps every row gets on publishing
(`as_of_date`, `run_id`, `model_version`); `metrics` is JSON-able and holds the numbers the
quality floors name. Nothing here imports pandas or scikit-learn: the DAG parses this file.

A *trained* model (a spec with `trains_on`) is fitted on history now and then and scores every
day. Its module has, instead of `run`:
- `fit(training: dict[str, DataFrame], as_of_date, settings) -> (fitted, metrics)`: `training`
  maps each `trains_on` table to all its rows (every training snapshot; of a table the model also
  reads to score, the rows it reads: the as-of date's, the window's of a windowed one); the model validates
  itself in time (train on earlier snapshots, validate on a later one) and returns a picklable
  `fitted` holding what scoring needs (and reference samples for drift) and the validation
  metrics the quality floors name; a spec with `fits_on_spark` has `fit` also take keyword
  `spark`: the warehouse's SparkSession when the warehouse is Spark, else None;
- `score(fitted, inputs, as_of_date, settings) -> (results, metrics)`: as `run`, with the fitted
  model; `metrics["drift_psi"]` maps the score and the top features to their population stability
  against the training data (`ml_tasks.monitoring`).
The runner stores each fit (`ml.trained_models`) and refits only when the spec's rule says so.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from warehouse import ColumnType

# Between a model's name and a setting's where a setting stands alone: `crmw run --param
# association_rules__top_k_offers=10`, CRMW_ASSOCIATION_RULES__TOP_K_OFFERS, error messages.
SETTING_SEPARATOR = "__"

# Stamped on every output row by the publishing step, declared by no spec.
STAMP_COLUMNS: dict[str, ColumnType] = {"as_of_date": "date", "run_id": "string", "model_version": "string"}
# The pandas dtype a declared column type has when the warehouse reads it back.
PANDAS_DTYPES: dict[ColumnType, str] = {
    "string": "str",
    "integer": "Int64",
    "decimal": "float64",
    "double": "float64",
    "boolean": "boolean",
    "date": "datetime64[us]",
    "timestamp": "datetime64[us]",
}

# The numerical columns of features.customer_features (and of training_set's snapshots), booleans
# among them: what a model reading a customer's features as numbers can take.
CUSTOMER_FEATURE_NUMBERS: tuple[str, ...] = (
    "tenure_days", "is_crm_contact", "order_count", "frequency", "monetary", "average_order_value",
    "recency_days", "frequency_last_30_days", "frequency_last_90_days", "monetary_last_90_days",
    "returned_orders", "cancelled_orders", "return_rate", "favourite_category_share",
    "distinct_categories", "discount_share", "items_per_order", "web_share", "store_share",
    "phone_share", "marketing_opt_in", "tickets_opened", "tickets_opened_last_90_days",
    "open_tickets", "unresolved_tickets", "slow_reply_tickets", "rated_tickets",
    "average_satisfaction", "dissatisfied_tickets", "days_since_last_ticket", "interactions",
    "interactions_last_90_days", "complaint_interactions", "campaigns_received",
    "campaign_conversions", "campaign_response_rate",
)


class InsufficientData(Exception):
    """Too little data to fit the model today (a new install, the first weeks of history): the run
    is recorded as `insufficient_data` and publishes empty tables with the declared columns."""


class BadParameter(ValueError):
    """A model setting is out of range; the message names it, the value and what was expected."""


class QualityBelowFloor(Exception):
    """A quality metric measured on held-out data fell below the spec's floor: nothing is
    published, the previous results stay, and retrying cannot help."""


@dataclass(frozen=True)
class OutputTable:
    name: str  # schema.table: the ml schema, or activation for what holds contact details
    columns: Mapping[str, ColumnType]  # declared types, stamps excluded
    description: str = ""
    # A row (or a few) per customer each day: its older as-of dates are thinned (HistoryPolicy).
    # Kept whole, a date of the customer models' outputs is ~315 MB at 100,000 customers on
    # PostgreSQL, 115 GB a year.
    thinned_history: bool = False

    @property
    def all_columns(self) -> dict[str, ColumnType]:
        return {**self.columns, **STAMP_COLUMNS}


@dataclass(frozen=True)
class HistoryPolicy:
    """Which earlier as-of dates an output with `thinned_history` keeps on a run's date: every date
    of the `daily_days` days before it (yesterday's for segment migration, last week's for a change
    on the week), and before those each month's last date held, for `monthly_months` months back
    (a year of month-ends lets the customer value's 365-day predictions be measured once their
    window closes). Dates after the run's (a backfill of an earlier day) are never dropped."""

    daily_days: int = 7
    monthly_months: int = 13

    ENVIRONMENT = {"daily_days": "CRMW_ML_DAILY_HISTORY_DAYS", "monthly_months": "CRMW_ML_MONTHLY_HISTORY_MONTHS"}

    def __post_init__(self) -> None:  # named as the user sets them
        check_range(self.ENVIRONMENT["daily_days"], self.daily_days, minimum=1, kind=int)
        check_range(self.ENVIRONMENT["monthly_months"], self.monthly_months, minimum=0, kind=int)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "HistoryPolicy":
        environ = os.environ if environ is None else environ
        values: dict[str, int] = {}
        for name, variable in cls.ENVIRONMENT.items():
            if text := environ.get(variable):
                try:
                    values[name] = int(text)
                except ValueError:
                    raise BadParameter(f"{variable}={text!r}: expected a whole number") from None
        return cls(**values)

    def dates_to_drop(self, held: Iterable[dt.date], as_of_date: dt.date) -> list[dt.date]:
        """The dates of `held` (the as-of dates an output holds rows of) a run of `as_of_date` drops."""
        held = sorted(set(held))
        month_last = {(day.year, day.month): day for day in held}  # ascending: the last one stays

        def kept(day: dt.date) -> bool:
            months_back = (as_of_date.year - day.year) * 12 + as_of_date.month - day.month
            return (as_of_date - day).days <= self.daily_days or (
                month_last[(day.year, day.month)] == day and months_back <= self.monthly_months)

        return [day for day in held if day < as_of_date and not kept(day)]


@dataclass(frozen=True)
class InputTable:
    name: str  # schema.table with an as_of_date column
    columns: tuple[str, ...] = ()  # empty: every column
    # Rows of the as-of date whose `window_column` falls in the `window_days` (a settings field)
    # days before it; for inputs such as baskets, whose history grows without end.
    window_column: str | None = None
    window_setting: str | None = None
    # A training input too big to read whole: at most `sample_setting` (a settings field) rows,
    # drawn as whole customers by a hash of customer_id (every snapshot of a drawn customer; the
    # same customers every day, so the sample changes only when the data does).
    sample_setting: str | None = None
    # Another model's output (a spec's `after`): on a date that model had too little data for it
    # holds no rows, which is no error here.
    may_lack_date: bool = False
    # False for a mart (one current row per ticket, per day of sales: no as_of_date column): the
    # rows whose `window_column` falls in the window ending on the as-of date. A daily run's marts
    # hold what was known that day; a backfill of a past date sees later corrections of its rows.
    dated: bool = True
    # A SQL condition on the table's own columns: rows the model never uses are not read (another
    # model's ten offers per customer, of which the first is used).
    row_filter: str | None = None
    # A stored table with the same rows and the training signature's columns, aggregated instead
    # of this one: features.training_set is a view joining its labels (features.training_labels)
    # to the feature snapshots, and the daily refit check needs only the labels.
    signature_from: str | None = None
    # Text columns of few distinct values over many rows (a year of basket items' skus, categories
    # and customers), read as pandas categoricals encoded while the rows stream in.
    categorical: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.dated and not self.window_column:
            raise ValueError(f"input {self.name}: an undated table needs a window_column to cut it at the as-of date")


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the DAG task id and ml.model_runs.model_name
    version: str  # changes whenever the method or its outputs change
    module: str  # the pure module with `run(...)`
    settings: type  # frozen dataclass of the model's parameters, validated on construction
    reads: tuple[InputTable, ...]
    writes: tuple[OutputTable, ...]
    # Rows of the first input needed before the model is fitted at all.
    minimum_input_rows: int
    # metric name -> lowest acceptable value, checked on held-out data when there is enough of it.
    quality_floors: Mapping[str, float] = field(default_factory=dict)
    # Outputs of earlier as-of dates the model reads back (stable ids, migrations).
    reads_previous: tuple[str, ...] = ()
    retraining: str = "refit on every run from the as-of date's features"
    description: str = ""
    # Trained models only (see the module docstring): the tables `fit` reads (all their rows; of a
    # table also in `reads`, the same rows the model reads to score: the as-of date's, the window's).
    trains_on: tuple[InputTable, ...] = ()
    # SQL aggregates over a `trains_on` table, per as_of_date (of a table also in `reads`: over the
    # rows read as of the date, one row however they move), that change when its training data does
    # (rows, labels): their digest is the training fingerprint. A stored fit is reused while
    # the fingerprint is unchanged and it is at most `retrain_max_age_days` old, or while no
    # aggregate of any snapshot moved by more than `training_change_tolerance` (a share of its
    # value at the fit) and no snapshot came or went: at scale a late order or return changes
    # some label every day, and a refit on 0.01% different rows only moves scores for no reason.
    training_signature: tuple[str, ...] = ("count(*)",)
    retrain_max_age_days: int | None = None
    training_change_tolerance: float = 0.0
    # `fit` takes keyword `spark` (see the module docstring): on a Spark warehouse it runs its heaviest
    # step on the session the warehouse adapter started in this process.
    fits_on_spark: bool = False
    # Scores whose outcome later becomes known: ml.model_performance measures them then.
    outcomes: tuple["OutcomeCheck", ...] = ()
    # Models whose outputs of the same date this one reads: the DAG runs it after them.
    after: tuple[str, ...] = ()
    # Output tables also written, once published, as a dated CSV file for tools that import files
    # (`<CRMW_EXPORT_DIR>/<schema>/<table>_<date>.csv`).
    exports: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for table in self.trains_on:
            if table.window_setting and table not in self.reads:
                raise ValueError(f"model {self.name}: windowed training table {table.name} must also be one it reads,"
                                 " with the same window: fit gets the rows read to score")

    @property
    def is_trained(self) -> bool:
        return bool(self.trains_on)

    def parameter_names(self) -> dict[str, str]:
        """Setting name -> settings field: `<model>__<field>`."""
        return {f"{self.name}{SETTING_SEPARATOR}{f.name}": f.name for f in dataclasses.fields(self.settings)}


@dataclass(frozen=True)
class OutcomeCheck:
    """How a published score is checked once its outcome is known: `kind` 'churn' (a probability
    that the customer places no order in the `horizon_days` after the as-of date) or 'spend' (a
    prediction of their net revenue in that window), read from `column` of `table`."""

    table: str
    column: str
    kind: str
    horizon_days: int


def nest_setting_params(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """DAG params from (name, value) pairs, each setting named `<model>__<setting>` (as `crmw run
    --param` and the environment name them) moved into its model's param, an object of settings
    by name. Objects given for one name merge; a name given both as an object of settings and as
    another value raises BadParameter."""
    params: dict[str, Any] = {}
    for name, value in pairs:
        model, separator, setting = name.partition(SETTING_SEPARATOR)
        key, value = (model, {setting: value}) if separator else (name, value)
        held = params.get(key)
        if isinstance(held, Mapping) and isinstance(value, Mapping):
            params[key] = {**held, **value}
        elif key in params and (isinstance(held, Mapping) or isinstance(value, Mapping)):
            raise BadParameter(
                f"param {name}: {key} is given both as settings and as {held if separator else value!r};"
                f" give its settings as {key}{SETTING_SEPARATOR}<setting>=VALUE or as one object"
            )
        else:
            params[key] = value
    return params


def param_schema(spec: ModelSpec) -> dict[str, Any]:
    """The model's DAG param, one per model: an object of its settings by field name, empty by
    default (each setting then comes from its environment variable or its default). The
    description lists the settings; a field documents itself with `metadata={"doc": ...}`.

    One object per model rather than a param per setting: Airflow copies, validates and serializes
    every DAG param once per task, and with a param per setting (95) that cost more than most
    tasks' work."""
    fields = dataclasses.fields(spec.settings)
    settings = [
        f"{setting.name} (default {json.dumps(setting.default)}): "
        + setting.metadata.get("doc", setting.name.replace("_", " ")).removeprefix(f"{spec.name}: ")
        for setting in fields
    ]
    example = fields[0]
    return {
        "default": {},
        "type": "object",
        "section": "Model settings",  # the trigger form groups the models' params under it
        "description": (
            f"Settings of {spec.name}, e.g. {json.dumps({example.name: example.default})}; a setting left out comes from "
            f"CRMW_{spec.name.upper()}__<SETTING> or its default. Settings: " + " | ".join(settings)
        ),
    }


def build_settings(spec: ModelSpec, params: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Any:
    """The model's settings from its DAG param (`{"<model>": {"<field>": value}}`), then
    environment variables (`CRMW_<MODEL>__<FIELD>`), then the dataclass defaults. Values that are
    not of the field's type or out of range raise BadParameter naming the setting as
    `<model>__<field>` (the name `crmw run --param` and the environment use)."""
    params = params or {}
    environ = os.environ if environ is None else environ
    flat = sorted(key for key in params if key.startswith(f"{spec.name}{SETTING_SEPARATOR}"))
    if flat:
        field_name = flat[0].removeprefix(f"{spec.name}{SETTING_SEPARATOR}")
        raise BadParameter(
            f"param {flat[0]}: a model's settings go in its own param, e.g. {json.dumps({spec.name: {field_name: params[flat[0]]}})}"
        )
    given = params.get(spec.name) or {}
    if not isinstance(given, Mapping):
        raise BadParameter(f"param {spec.name}: got {given!r}, expected an object of its settings by name")
    values: dict[str, Any] = {}
    for param, name in spec.parameter_names().items():
        if given.get(name) is not None:
            values[name] = given[name]
        elif environ.get(f"CRMW_{param.upper()}"):
            values[name] = _from_text(spec, param, environ[f"CRMW_{param.upper()}"])
    unknown = sorted(set(given) - set(spec.parameter_names().values()))
    if unknown:
        raise BadParameter(f"param {spec.name}{SETTING_SEPARATOR}{unknown[0]}: unknown; expected one of {', '.join(sorted(spec.parameter_names()))}")
    try:
        return spec.settings(**values)
    except BadParameter as error:
        raise BadParameter(f"param {spec.name}{SETTING_SEPARATOR}{error}") from None


def _from_text(spec: ModelSpec, param: str, text: str) -> Any:
    default = dataclasses.fields(spec.settings)[list(spec.parameter_names()).index(param)].default
    try:
        if isinstance(default, bool):
            return text.strip().lower() in ("1", "true", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float) or default is None:
            return float(text)
    except ValueError:
        raise BadParameter(f"CRMW_{param.upper()}={text!r}: expected a number") from None
    return text


def check_range(name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
                kind: type | tuple[type, ...] = (int, float), allow_none: bool = False) -> None:
    """For settings' __post_init__: raise BadParameter('<field>: got ..., expected ...')."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else "a number"
        raise BadParameter(f"{name}: got {value!r}, expected {expected}")
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        bounds = f"between {minimum} and {maximum}" if minimum is not None and maximum is not None else (
            f"at least {minimum}" if minimum is not None else f"at most {maximum}")
        raise BadParameter(f"{name}: got {value!r}, expected {bounds}")


def float_values(values: Any) -> Any:
    """A column (a pandas Series) as a float64 array with NaN for nulls and for anything that is no
    number: numbers, nullable integers and booleans directly, anything else (decimals as objects)
    through pd.to_numeric. Going through Python objects for a numeric column took 3.7 of the 5.1 s
    the segments spent reading their buyers at a million customers."""
    import numpy as np
    import pandas as pd

    if pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype):
        return values.to_numpy(dtype="float64", na_value=np.nan)
    return pd.to_numeric(values.astype("object"), errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def typed_results(frame: Any, columns: Mapping[str, ColumnType]) -> Any:
    """`frame` with exactly `columns`, in order, in the dtypes the warehouse reads them back in;
    an integer column may hold missing values, and its numbers are rounded to whole ones."""
    import pandas as pd

    typed = pd.DataFrame(index=frame.index)
    for column, kind in columns.items():
        if kind == "integer":
            # Through object: Int64 with missing values, Python ints, numpy ints and floats alike.
            numbers = pd.to_numeric(frame[column].astype("object")).round()
            typed[column] = pd.array(numbers, dtype="Int64")
        else:
            typed[column] = frame[column].astype(PANDAS_DTYPES[kind])
    return typed.reset_index(drop=True)


def rounded_for_json(value: Any, *, significant_digits: bool = False) -> Any:
    """Metrics made JSON-able, through dicts (keys as text) and lists: floats rounded to 6 decimals
    (to 6 significant digits with `significant_digits`), NaN and infinities as None, numpy scalars
    as Python's."""
    if isinstance(value, dict):
        return {str(key): rounded_for_json(item, significant_digits=significant_digits) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded_for_json(item, significant_digits=significant_digits) for item in value]
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.6g}") if significant_digits else round(value, 6)
    return value


def iso_day(value: Any) -> str:
    """'YYYY-MM-DD' of a date, a datetime, a pandas or numpy timestamp, or ISO text."""
    return str(value)[:10]


def checked_input(inputs: Mapping[str, Any], name: str, columns: Sequence[str], expected_tables: Sequence[str]) -> Any:
    """The frame `inputs[name]`, after checking it is there with `columns`; else ValueError naming
    the table, or the first missing column, and what was expected."""
    if name not in inputs:
        raise ValueError(f"inputs: no {name!r}; expected {' and '.join(expected_tables)}")
    frame = inputs[name]
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{name}: missing column {missing[0]!r}; expected {', '.join(columns)}")
    return frame
