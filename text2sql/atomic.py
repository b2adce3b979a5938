"""Files and directories written whole or not at all: built under a temp name beside the destination, then renamed
over it (`os.replace`, atomic within one filesystem).

A kill, a full disk or an error mid-write leaves the previous version (or nothing), never half of one. The temp name
is hidden, unique and ends in `.tmp` (`.NAME.<random>.tmp`): two writers never share one, and nothing that looks
for `*.json` / `*.ckpt` / `*.sql` takes it for the real file. Imports nothing of the project.

(The build cache's directories, which several processes may build at once and keep a completion marker, have their
own rules: `text2sql.data.cache.atomic_dir`.)
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temp path beside `path` to write a file (or make a directory) at; when the block ends, it replaces
    `path`. On any error it is removed and `path` stays as it was.

    `fsync`: flush the file to disk before the rename (checkpoints: the rename must not land before the data).
    A directory replaces an existing `path` by moving the old one aside first (a rename cannot replace a
    non-empty directory), then deleting it: readers see the old version or the new one, never a mix.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        if fsync and tmp.is_file():
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        if tmp.is_dir() and (path.exists() or path.is_symlink()):
            old = tmp.with_name(tmp.name.removesuffix(".tmp") + ".old")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
