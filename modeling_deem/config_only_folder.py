"""Folders that ship configs and weights but no code (`hub_configs/*`): the installed package provides the classes.

`save_pretrained` copies the remote-code files next to the weights and points `auto_map` at them, also inside the
processor config's nested image-processor entry. A folder without those files must not point at them either, or
`trust_remote_code=True` looks for modules that are not there.
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_FILES = ("config.json", "processor_config.json", "preprocessor_config.json", "tokenizer_config.json")


def drop_code_copies(folder: str | Path, sort_keys: bool = False) -> list[str]:
    """Deletes the `*.py` copies in `folder` and every `auto_map` that names them; returns the files changed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    changed = []
    for copied in sorted(folder.glob("*.py")):
        copied.unlink()
        changed.append(copied.name)
    for name in CONFIG_FILES:
        path = folder / name
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        found = data.pop("auto_map", None) is not None
        for value in data.values():
            if isinstance(value, dict) and value.pop("auto_map", None) is not None:
                found = True
        if found:
            path.write_text(json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")
            changed.append(name)
    return changed
