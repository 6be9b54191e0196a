"""Which results file a run owns.

The rule: `<results-dir>/<benchmark>/<data key>/<model key>.json`.

- model key = `<last part of the model name>-<8 hex of sha256(model identity)>`; the identity of a local folder is
  its resolved absolute path, of anything else (a hub id) the id as given. Two different `.../checkpoint` folders
  get different keys; the same folder, however it is spelled, gets the same one.
- data key = `<data file or folder name>-<8 hex of sha256(file names, file bytes, --limit)>` over the benchmark
  data files read (not the images: hashing them would take as long as the evaluation). Editing the data file or
  changing --limit starts a new table instead of mixing with runs on the old data.

So a rerun of the same model on the same data replaces exactly its own file, and a table lists only the runs of
one data key (each data key has its own folder, chart included).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def readable(name: str) -> str:
    """The last path part of a model or data name, safe as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name).rstrip("/\\").replace("\\", "/").split("/")[-1]) or "run"


def model_identity(model: str | Path) -> str:
    """A local folder's resolved absolute path; a hub id (or anything not on disk) as given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else str(model)


def model_key(model: str | Path) -> str:
    return f"{readable(str(model))}-{short_hash(model_identity(model))}"


def data_key(name: str | Path, files: Sequence[Path], limit: int | None) -> str:
    """Key of the data a run read: its files' names and bytes (in the given order) and the --limit."""
    digest = hashlib.sha256(f"limit={limit}".encode())
    for path in files:
        digest.update(f"\0{Path(path).name}\0".encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return f"{readable(Path(name).stem or str(name))}-{digest.hexdigest()[:8]}"
