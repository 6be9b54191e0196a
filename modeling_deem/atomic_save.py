"""Saving into a folder so that a kill at any moment leaves the old save or the new one there, never a mix.

`save_pretrained` over an earlier save deletes and rewrites weight shards in place; killed part-way, the folder
can hold old and new shards that load without a word. Here the new save is written into a staging folder beside
the target, whatever else the target holds (Trainer checkpoints, logs, a processor) is hard-linked into it, and
the two folders are swapped in one `renameat2(RENAME_EXCHANGE)` call (Linux). Where that call is missing, the
target is renamed aside and the staging folder renamed in: a kill between the two renames leaves the old save
complete under `.<name>.replaced-*` beside the target, still never a mix. Kills, not power loss: nothing is fsynced.
Exported as remote code: standard library only.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# What a save writes that a later save replaces rather than keeps: weights, shards and their index.
_WEIGHTS = re.compile(r"^(model|pytorch_model|adapter_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?$")
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside `target`; when the block ends without error, the staging folder's
    content becomes `target`'s, in one step. On error, `target` is untouched and the staging folder removed.
    The folder keeps its mode (a new one gets the umask's, as `mkdir` would give it). The working directory and
    the folders above it are refused: the swap would leave the process in a deleted folder."""
    given = target
    target = Path(target).resolve()  # "." or "x/.." name no folder to stage beside
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise ValueError(f"Cannot save into {given!s} ({target}): it is the current working directory or holds "
                         "it, and the save replaces the folder. Save into a subfolder, or change directory first.")
    if target.exists() and not target.is_dir():
        raise ValueError(f"Cannot save into {target}: it is a file, not a folder.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.saving-", dir=target.parent))
    try:
        os.chmod(staging, stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o777 & ~_umask())
        yield staging
        if target.exists():
            _carry_over(target, staging)
            _replace(staging, target)
        else:
            os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after an exchange it holds the old save


def _umask() -> int:
    """The process's umask (read by setting it, so set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _carry_over(target: Path, staging: Path) -> None:
    """Hard-link into the staging folder what the target holds besides the save being replaced."""
    for entry in target.iterdir():
        destination = staging / entry.name
        if destination.exists() or _WEIGHTS.match(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, destination, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, destination)


def _link_or_copy(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    if os.path.islink(source):
        os.symlink(os.readlink(source), destination)
        return
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _replace(staging: Path, target: Path) -> None:
    if _exchange(staging, target):
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.replaced-", dir=target.parent))
    os.rmdir(aside)
    os.rename(target, aside)
    os.rename(staging, target)
    shutil.rmtree(aside, ignore_errors=True)


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swap two paths (Linux `renameat2`); False where the system or file system lacks it."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(code, f"Could not swap {first} and {second}: {os.strerror(code)}")
