"""The warehouse adapter: the only code that knows DuckDB from PostgreSQL.

Everything else (extract, ML I/O, the CLI) goes through `connect()` and the `Warehouse` methods.
"""

from warehouse.adapter import (
    PROJECT_ROOT,
    ColumnType,
    Warehouse,
    WarehouseUrl,
    WarehouseSettingsError,
    WarehouseUrlError,
    connect,
    default_warehouse_url,
    parse_warehouse_url,
)

__all__ = [
    "PROJECT_ROOT",
    "ColumnType",
    "Warehouse",
    "WarehouseUrl",
    "WarehouseSettingsError",
    "WarehouseUrlError",
    "connect",
    "default_warehouse_url",
    "parse_warehouse_url",
]
