"""Writing files so that a reader never sees a part of one: every file is written beside its
target under a name no other writer uses and renamed into place. The one helper for the package;
`atomic_write(path, write)` takes any writer (`np.save`, `savefig`, a compiler's `-o`)."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import numpy as np


def _reserve_sibling(path: Path) -> Path:
    """A new, empty file beside `path` with a name no other writer uses. Created with mode 0o666
    less the umask, as `open` creates files (mkstemp's 0o600 would pass to the target on rename)."""
    while True:
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.part{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def atomic_write(path: Path, write) -> Path:
    """Call `write(tmp_path)` (a str ending in `path`'s suffix) and rename the result to `path`:
    a reader sees the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _reserve_sibling(path)
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_npz(path: Path, **arrays) -> Path:
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)


def save_json(path: Path, obj) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2)))


def save_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_figure(path: Path, figure, **kw) -> Path:
    """A matplotlib figure saved atomically (the format follows `path`'s suffix)."""
    return atomic_write(path, lambda tmp: figure.savefig(tmp, **kw))
