"""Reading benchmark data files into rows that remember where they came from.

Every later refusal (a bad label, an answer outside the options, a broken image) names the file and line, so a
row keeps its file and its 1-based line: the real line for JSON lines and CSV, the item number for a JSON list.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Row:
    """One benchmark row (its fields) and its place in the data file."""

    fields: dict[str, Any]
    file: Path
    line: int
    unit: str = "line"

    @property
    def where(self) -> str:
        return f"{self.file}, {self.unit} {self.line}"


def read_located_rows(path: str | Path) -> list[Row]:
    """JSON lines, a JSON list, or a CSV with a header; a parse error is a ValueError naming file and line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Benchmark data {path} does not exist.")
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        return _read_json_list(path, text)
    return _read_json_lines(path, text)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows' fields only (for callers that need no locations)."""
    return [row.fields for row in read_located_rows(path)]


def _read_csv(path: Path) -> list[Row]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        try:
            return [Row(dict(fields), path, reader.line_num) for fields in reader]
        except csv.Error as error:
            raise ValueError(f"{path}, line {reader.line_num}: not valid CSV ({error}).") from error


def _read_json_lines(path: Path, text: str) -> list[Row]:
    rows = []
    # split on "\n" only: str.splitlines would also split inside strings holding U+2028 and shift line numbers
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg} at column {error.colno}).") from error
        rows.append(Row(_as_object(fields, path, f"line {number}"), path, number))
    return rows


def _read_json_list(path: Path, text: str) -> list[Row]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        problem = f"not valid JSON ({error.msg} at column {error.colno})"
        raise ValueError(f"{path}, line {error.lineno}: {problem}.") from error
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of objects.")
    return [Row(_as_object(item, path, f"item {number}"), path, number, "item")
            for number, item in enumerate(items, start=1)]


def _as_object(value: Any, path: Path, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{path}, {where}: expected a JSON object, got {type(value).__name__} {value!r:.60}.")
    return value
