"""Every benchmark row is checked before any question is answered, so a bad file fails in seconds, not after hours.

Two outcomes per row, never a substitute:
- refused (ValueError naming file, line and the problem): data that would be scored wrongly, i.e. a yes/no label
  that is not clearly yes or no, an MMVP answer outside its options, an MMVP pair with other than two rows, an
  image that exists but does not decode;
- skipped and counted by reason: rows that cannot be evaluated but say nothing wrong about the others (no image
  given, an empty required field, an image file missing, as in a partial download). An MMVP row whose pair
  partner is skipped is skipped too ("pair partner skipped"), since a pair is scored only as a whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .images import check_image
from .rows import Row

_YES = {"yes", "true", "1"}
_NO = {"no", "false", "0"}
_OPTION_LETTER = re.compile(r"\(([A-Za-z])\)")
PARTNER_SKIPPED = "pair partner skipped"


@dataclass(frozen=True)
class RowRules:
    """What a benchmark's rows must satisfy. A required key "a|b" is satisfied by either field."""

    required: tuple[str, ...]
    yes_no_label: str | None = None  # this field is a yes/no ground truth, normalised to "yes"/"no"
    answer_in_options: bool = False  # "answer" must be one of the row's lettered "options" (when it has any)
    pair_key: str | None = None  # rows come in pairs sharing this field; a pair is kept or skipped whole


@dataclass
class PreparedRows:
    rows: list[dict[str, Any]]  # kept rows, with "image_path" added
    skipped: dict[str, int] = field(default_factory=dict)  # reason → count
    skipped_rows: list[dict[str, Any]] = field(default_factory=list)  # {"file", "line", "reason"} per skipped row


def yes_no_label(value: Any) -> str | None:
    """"yes"/"no" for unambiguous labels (yes/no/true/false/1/0 in any case and spacing, JSON booleans, the ints
    1 and 0); None for anything else."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return {1: "yes", 0: "no"}.get(value)
    if isinstance(value, str):
        text = value.strip().lower()
        return "yes" if text in _YES else "no" if text in _NO else None
    return None


def option_choices(options: Any) -> dict[str, str]:
    """Letter → text of MMVP options: "(a) Yes (b) No", or a list (lettered a, b, ... in order); empty if neither."""
    if isinstance(options, (list, tuple)):
        return {chr(ord("a") + i): str(text).strip() for i, text in enumerate(options)}
    if not isinstance(options, str):
        return {}
    parts = _OPTION_LETTER.split(options)
    return {letter.lower(): text.strip() for letter, text in zip(parts[1::2], parts[2::2])}


def option_letter(answer: Any, choices: dict[str, str]) -> str | None:
    """The letter of the option an answer names by its letter ("(a)", "a", "(A)"), its text ("Yes") or both
    ("(a) Yes"); None if it names none."""
    text = " ".join(str(answer).split()).lower()
    letter = text.strip("()")
    if len(letter) == 1 and letter in choices:
        return letter
    for key, option in choices.items():
        if text in (" ".join(option.split()).lower(), f"({key}) {' '.join(option.split())}".lower()):
            return key
    return None


def answer_is_an_option(answer: Any, choices: dict[str, str]) -> bool:
    """An answer names an option by its letter ("(a)", "a", "(A)"), its text ("Yes") or both ("(a) Yes")."""
    return option_letter(answer, choices) is not None


def prepare_rows(rows: list[Row], image_root: Path | None, rules: RowRules, limit: int | None = None) -> PreparedRows:
    """The rows to evaluate, after checking all of them.

    Labels, options and pairs are checked on every row, even past `limit` (cheap, and a broken file is broken);
    images are opened (each file once) only for the rows examined. Rows are taken in order until `limit` are kept;
    a pair is taken whole, so with pairs one more than `limit` may be kept. Skips are counted for the rows examined.
    """
    reasons = [_row_problem(row, rules) for row in rows]
    prepared = PreparedRows([])
    decodes: dict[Path, bool] = {}
    for group in _units(rows, rules):
        if limit is not None and len(prepared.rows) >= limit:
            break
        for index in group:
            if reasons[index] is None and not _image_exists(rows[index], image_root, decodes):
                reasons[index] = "image file missing"
        if rules.pair_key is not None and any(reasons[i] for i in group):
            for index in group:
                reasons[index] = reasons[index] or PARTNER_SKIPPED
        for index in group:
            if reasons[index]:
                _skip(prepared, rows[index], reasons[index])
            else:
                fields = rows[index].fields
                prepared.rows.append({**fields, "image_path": str(_image_path(fields, image_root))})
    return prepared


def _row_problem(row: Row, rules: RowRules) -> str | None:
    """The skip reason of a row, or None; raises for a row that would be scored wrongly. A yes/no label is
    normalised in place, so scoring compares "yes"/"no" only; so is an MMVP answer, to its option letter "(a)"
    (the file's own spelling kept as "answer_as_given" when it differs), so scoring compares letters only."""
    fields = row.fields
    if not fields.get("image"):
        return "no image given"
    missing = [key for key in rules.required if all(fields.get(k) in (None, "", []) for k in key.split("|"))]
    if missing:
        return "empty " + ", ".join(missing)
    if rules.yes_no_label:
        label = yes_no_label(fields[rules.yes_no_label])
        if label is None:
            raise ValueError(f"{row.where}: {rules.yes_no_label} {fields[rules.yes_no_label]!r} is not yes or no "
                             "(accepted: yes/no, true/false, 1/0).")
        fields[rules.yes_no_label] = label
    if rules.answer_in_options and fields.get("options") not in (None, "", []):
        choices = option_choices(fields["options"])
        if not choices:
            raise ValueError(f"{row.where}: options {fields['options']!r} are not lettered like \"(a) ... (b) ...\".")
        letter = option_letter(fields["answer"], choices)
        if letter is None:
            raise ValueError(f"{row.where}: answer {fields['answer']!r} is not one of the options "
                             f"{fields['options']!r}.")
        if fields["answer"] != f"({letter})":
            fields["answer_as_given"], fields["answer"] = fields["answer"], f"({letter})"
    return None


def _units(rows: list[Row], rules: RowRules) -> list[list[int]]:
    """Row indices grouped as they are evaluated: single rows, or pairs (in order of first appearance)."""
    if rules.pair_key is None:
        return [[i] for i in range(len(rows))]
    pairs: dict[Any, list[int]] = {}
    units: list[list[int]] = []
    for index, row in enumerate(rows):
        pair = row.fields.get(rules.pair_key)
        if pair in (None, ""):  # skipped for an empty pair key: no partner to take along
            units.append([index])
        elif pair in pairs:
            pairs[pair].append(index)
        else:
            pairs[pair] = [index]
            units.append(pairs[pair])
    for pair, members in pairs.items():
        if len(members) != 2:
            places = "; ".join(rows[i].where for i in members)
            raise ValueError(f"{rules.pair_key} {pair!r} has {len(members)} rows ({places}); pairs need exactly two.")
    return units


def _image_path(fields: dict[str, Any], image_root: Path | None) -> Path:
    path = Path(fields["image"])
    return path if path.is_absolute() or image_root is None else image_root / path


def _image_exists(row: Row, image_root: Path | None, decodes: dict[Path, bool]) -> bool:
    """False for a missing file; raises (naming row and file) for one that does not decode."""
    path = _image_path(row.fields, image_root)
    if path not in decodes:
        try:
            check_image(path)
            decodes[path] = True
        except FileNotFoundError:
            decodes[path] = False
        except ValueError as error:
            raise ValueError(f"{row.where}: {error}") from error
    return decodes[path]


def _skip(prepared: PreparedRows, row: Row, reason: str) -> None:
    prepared.skipped[reason] = prepared.skipped.get(reason, 0) + 1
    prepared.skipped_rows.append({"file": str(row.file), row.unit: row.line, "reason": reason})
