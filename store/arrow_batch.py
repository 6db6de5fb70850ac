"""Plain records -> one Arrow table, the form in which the writer hands a batch to DuckDB.

What gets stored is what `pa.Table.from_pylist` gives on the records with dict and list values as
JSON text: the columns are the first record's keys, a key a record lacks is NULL, and each column's
Arrow type is inferred, then cast by DuckDB to the table's column type.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import pyarrow as pa

# Table column type -> (Arrow type, Python types a column's first value may have) for which the one
# C++ pass stores what inference would: a later value of another type fails the pass, which then
# falls back. Numbers go in as doubles: exact for INTEGER, and the type inference gives a mix of
# ints and floats (an int64 pass would truncate 3.7 to 3 where DuckDB rounds the double to 4).
# One input differs: a bool after ints, which inference refuses, goes in as 1 or 0.
_DIRECT = {
    "BOOLEAN": (pa.bool_(), (bool,)),
    "INTEGER": (pa.float64(), (int, float)),
    "DOUBLE": (pa.float64(), (int, float)),
    "VARCHAR": (pa.string(), (str,)),
    "JSON": (pa.string(), (str,)),
}


def json_ready(value: Any) -> Any:
    """Dict and list values become JSON text (the JSON columns); others stay as they are."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def _inferred_column(values: list) -> pa.Array:
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # JSON values beside text, or a mix Arrow refuses
        return pa.array([json_ready(v) for v in values])
    # Arrow reads dicts as structs and lists as lists; only such a column can hold JSON values.
    return pa.array([json_ready(v) for v in values]) if pa.types.is_nested(array.type) else array


def _direct_types(rows: Sequence[dict], names: list[str], column_types: Mapping[str, str]) -> dict[str, pa.DataType]:
    """The columns that can take the one C++ pass, judged by their first non-NULL value (see `_DIRECT`)."""
    direct = {}
    for name in names:
        arrow_type, first_types = _DIRECT.get(column_types.get(name, ""), (None, ()))
        first = next((v for v in (row.get(name) for row in rows) if v is not None), None)
        if type(first) in first_types:
            direct[name] = arrow_type
    return direct


def rows_to_arrow(rows: Sequence[dict] | pa.Table, column_types: Mapping[str, str] | None = None) -> pa.Table:
    """Records -> Arrow. `column_types` (column -> DuckDB type of the target table) lets plain columns
    convert in one pass over the records in C++ instead of one Python pass per column."""
    if isinstance(rows, pa.Table):
        return rows
    names = list(rows[0]) if rows else []
    direct = _direct_types(rows, names, column_types or {})
    converted: dict[str, pa.Array] = {}
    if direct:
        try:  # keys outside the struct type are skipped, missing ones are NULL
            struct = pa.array(rows, type=pa.struct(list(direct.items())))
            converted = {name: struct.field(name) for name in direct}
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # a later value of another type
            converted = {}
    columns = [
        converted[name] if name in converted else _inferred_column([row.get(name) for row in rows]) for name in names
    ]
    return pa.Table.from_arrays(columns, names=names)
