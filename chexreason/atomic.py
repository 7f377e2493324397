"""Write files and folders so that a kill at any moment leaves either the old version or the new one, never
part of one: readers then only need to ask whether a file exists.

- `write_text` writes beside the target and renames over it (`os.replace` is atomic on one file system).
- `install_folder` replaces a folder by one staged beside it (``<name>.partial``); a folder cannot be renamed
  over a non-empty one, so the old one is first moved aside (``<name>.old``). `recover_folder`, which every
  reader of such a folder calls first, finishes or undoes an install a kill interrupted: with the folder gone
  and ``.old`` present the staged one was complete, so it is installed; otherwise the staged one is discarded.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (a temporary file beside it, flushed to disk, then renamed over it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
    return path


def staging_folder(dest: str | Path) -> Path:
    """An empty folder beside `dest` to write its new version into, for `install_folder`."""
    dest = Path(dest)
    recover_folder(dest)
    staged = dest.with_name(f"{dest.name}.partial")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    return staged


def install_folder(staged: str | Path, dest: str | Path) -> Path:
    """Make the complete folder `staged` (from `staging_folder`) the folder `dest`, replacing any old one."""
    staged, dest = Path(staged), Path(dest)
    old = dest.with_name(f"{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    staged.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def recover_folder(dest: str | Path) -> Path:
    """Finish or undo an `install_folder` that a kill interrupted, so that `dest` is a complete folder or absent."""
    dest = Path(dest)
    staged, old = dest.with_name(f"{dest.name}.partial"), dest.with_name(f"{dest.name}.old")
    if not dest.exists() and old.exists() and staged.is_dir():  # killed between the two renames
        staged.rename(dest)
    shutil.rmtree(staged, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return dest
