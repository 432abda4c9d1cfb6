"""Read the source contract (source_contract.yml) into typed settings."""

from __future__ import annotations

import codecs
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import get_args

import yaml

from warehouse import ColumnType

DEFAULT_CONTRACT_PATH = Path(__file__).with_name("source_contract.yml")
FORMATS = ("sql", "csv", "jsonl")
# The keys each level of the contract may hold: any other is a typo or a cut-off value, and fails.
DOCUMENT_KEYS = ("systems", "entities")
SYSTEM_KEYS = ("description", "format", "raw_schema", "layout", "encoding")
DEFAULT_ENCODING = "utf-8"
ENTITY_KEYS = ("system", "description", "primary_key", "cursor", "columns")
COLUMN_KEYS = ("type", "required", "description")


class ContractError(ValueError):
    """The contract file is malformed; the message names the file, entity and field."""


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    required: bool
    description: str


@dataclass(frozen=True)
class System:
    name: str
    description: str
    format: str
    raw_schema: str
    layout: str | None
    encoding: str = DEFAULT_ENCODING  # of a file system's exports; Python's codec name, e.g. cp1252


@dataclass(frozen=True)
class Entity:
    name: str
    system: System
    description: str
    primary_key: tuple[str, ...]
    cursor: str | None
    columns: tuple[Column, ...]

    @property
    def raw_table(self) -> str:
        return f"{self.system.raw_schema}.{self.name}"

    @property
    def column_types(self) -> dict[str, ColumnType]:
        return {column.name: column.type for column in self.columns}

    @property
    def required_columns(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns if column.required)


@dataclass(frozen=True)
class SourceContract:
    path: Path
    systems: dict[str, System]
    entities: dict[str, Entity]

    def entities_of(self, system: str) -> list[Entity]:
        return [entity for entity in self.entities.values() if entity.system.name == system]


def contract_path() -> Path:
    return Path(os.environ.get("CRMW_SOURCE_CONTRACT") or DEFAULT_CONTRACT_PATH)


@cache
def _load(path: Path) -> SourceContract:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ContractError(f"source contract {path}: cannot be read ({error})") from error
    _check_keys(path, "the document", document, DOCUMENT_KEYS)
    for name, spec in document["systems"].items():
        _check_keys(path, f"systems.{name}", spec, SYSTEM_KEYS)
    systems = {
        name: System(
            name=name,
            description=spec.get("description", ""),
            format=_one_of(path, f"systems.{name}.format", spec.get("format"), FORMATS),
            raw_schema=spec["raw_schema"],
            layout=spec.get("layout"),
            encoding=_encoding(path, name, spec),
        )
        for name, spec in document["systems"].items()
    }
    entities = {}
    for name, spec in document["entities"].items():
        where = f"entities.{name}"
        _check_keys(path, where, spec, ENTITY_KEYS)
        for column_name, column in spec["columns"].items():
            _check_keys(path, f"{where}.columns.{column_name}", column, COLUMN_KEYS)
        system_name = _one_of(path, f"{where}.system", spec.get("system"), tuple(systems))
        columns = tuple(
            Column(
                name=column_name,
                type=_one_of(path, f"{where}.columns.{column_name}.type", column.get("type"), get_args(ColumnType)),
                required=bool(column.get("required", False)),
                description=column.get("description", ""),
            )
            for column_name, column in spec["columns"].items()
        )
        primary_key = tuple(spec.get("primary_key") or ())
        names = {column.name for column in columns}
        for key in primary_key:
            if key not in names:
                raise ContractError(f"source contract {path}: {where}.primary_key names {key!r}, which is not a column")
        cursor = spec.get("cursor")
        types = {column.name: column.type for column in columns}
        if cursor is not None and types.get(cursor) != "timestamp":
            raise ContractError(f"source contract {path}: {where}.cursor names {cursor!r}; expected a timestamp column")
        if cursor is None and systems[system_name].format == "sql":
            raise ContractError(f"source contract {path}: {where}.cursor is missing; a SQL table is read by its cursor")
        entities[name] = Entity(
            name=name,
            system=systems[system_name],
            description=spec.get("description", ""),
            primary_key=primary_key,
            cursor=cursor,
            columns=columns,
        )
    return SourceContract(path=path, systems=systems, entities=entities)


def _check_keys(path: Path, where: str, spec: object, allowed: tuple[str, ...]) -> None:
    if not isinstance(spec, dict):
        raise ContractError(f"source contract {path}: {where} is {spec!r}; expected a mapping of {', '.join(allowed)}")
    for key, value in spec.items():
        if key not in allowed:
            # YAML ends an unquoted value inside {…} at a comma and reads the rest as a key.
            hint = "; a value holding a comma inside {…} needs quotes" if value is None else ""
            raise ContractError(
                f"source contract {path}: {where} has an unknown key {key!r} (expected: {', '.join(allowed)}){hint}"
            )


def _encoding(path: Path, system: str, spec: dict) -> str:
    """The system's declared file encoding by its codec's own name (`latin-1` → `iso8859-1`). Files
    are split into lines as bytes, so the encoding must write ASCII as ASCII (not UTF-16)."""
    where = f"source contract {path}: systems.{system}.encoding"
    if "encoding" not in spec:
        return DEFAULT_ENCODING
    if spec.get("format") == "sql":
        raise ContractError(f"{where}: a SQL source has no file encoding (its driver decodes the text)")
    try:
        name = codecs.lookup(str(spec["encoding"])).name
        ascii_compatible = "\n,\"{}:".encode(name) == b'\n,"{}:'
    except LookupError:
        raise ContractError(f"{where} is {spec['encoding']!r}: not a known encoding (e.g. utf-8, cp1252, latin-1)") from None
    if not ascii_compatible:
        raise ContractError(f"{where} is {spec['encoding']!r}: expected an encoding that writes ASCII as ASCII (e.g. utf-8, cp1252, latin-1)")
    return name


def _one_of(path: Path, field: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ContractError(f"source contract {path}: {field} is {value!r}; expected one of {', '.join(allowed)}")
    return str(value)


def load_contract(path: Path | None = None) -> SourceContract:
    return _load((path or contract_path()).resolve())


def render_markdown(contract: SourceContract) -> str:
    """The contract as Markdown tables, as the README shows it."""
    lines: list[str] = []
    for system in contract.systems.values():
        where = f" — files at `{system.layout}`" if system.layout else ""
        lines += [f"#### `{system.name}` ({system.format}) → `{system.raw_schema}`{where}", "", system.description, ""]
        for entity in contract.entities_of(system.name):
            key = ", ".join(entity.primary_key)
            cursor = f" Changes move `{entity.cursor}`." if entity.cursor else ""
            lines += [f"**{entity.name}** — {entity.description} Key: `{key}`.{cursor}", ""]
            lines += ["| column | type | required | description |", "|---|---|---|---|"]
            lines += [
                f"| `{c.name}` | {c.type} | {'yes' if c.required else 'no'} | {c.description} |" for c in entity.columns
            ]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
