"""The models the DAG runs: one spec per model family. The DAG makes one task per spec, `publish`
makes a `_latest` view and a BI grant for every table a spec writes, and ml.model_runs records each
run against the spec's name and version. A new model is one module and one spec here.

Imports no pandas or scikit-learn: the DAG file parses this.
"""

from __future__ import annotations

from ml_tasks.contract import InputTable, ModelSpec, OutputTable

# ---- customer segments and clusters (ml_tasks/clustering.py) ------------------------------------
# SEGMENTS_SPEC is defined by the clustering module's author below.

# ---- association rules and next-best offers (ml_tasks/association.py) ---------------------------
# ASSOCIATION_SPEC is defined by the association module's author below.

MODELS: tuple[ModelSpec, ...] = ()


def model(name: str) -> ModelSpec:
    for spec in MODELS:
        if spec.name == name:
            return spec
    raise KeyError(f"model {name!r}: not in the registry; expected one of {', '.join(s.name for s in MODELS)}")


def output_tables() -> list[OutputTable]:
    """Every table any model writes; two models never write the same one."""
    tables = [table for spec in MODELS for table in spec.writes]
    names = [table.name for table in tables]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"registry: {duplicated[0]} is written by more than one model")
    return tables
