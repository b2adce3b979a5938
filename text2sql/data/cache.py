"""The build cache (generated data, built tiny models): write a directory all at once: build it beside its destination, rename it into place when complete.

Several processes may build the same cache dir at once (two runs started together on a cold cache):
`build_lock` lets the first build it while the others wait and then find it complete, and `atomic_dir` never
deletes a complete dir another process may be reading.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

COMPLETE = ".complete"  # written last into every dir atomic_dir builds


@contextmanager
def atomic_dir(out_dir: str | os.PathLike):
    """Yield a temp dir next to `out_dir`; on success it replaces `out_dir`, on any error it is removed.

    Readers (and a rerun after a crash) see either the old complete dir or the new one, never half of one.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        (tmp / COMPLETE).touch()
        if (out_dir / COMPLETE).is_file():  # another process finished the same build first: keep its dir
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_complete(out_dir: str | os.PathLike) -> bool:
    """Whether `out_dir` was fully written by `atomic_dir` (cheap: no lock, works on a read-only cache)."""
    return (Path(out_dir) / COMPLETE).is_file()


@contextmanager
def build_lock(out_dir: str | os.PathLike):
    """Hold an exclusive lock named after `out_dir` (a `.NAME.lock` file beside it) while checking/building it.

    `filelock` locks with `fcntl.flock` on Linux, which the kernel releases when the process dies, so a killed build
    never leaves a stale lock.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(out_dir.parent / f".{out_dir.name}.lock"):
        yield
