"""Where this installation's Hydra config tree lives: the one place that knows.

In a checkout `text2sql/conf` is a link to the repository's `conf/`; a wheel (`pip install .`) ships the same
files as package data under `text2sql/conf`. Either way `conf_dir()` is that directory, so `text2sql predict` and
`hardware=auto` compose the same tree that `train.py` (`config_path="conf"`) does.
"""

from __future__ import annotations

from pathlib import Path


def conf_dir() -> Path:
    """The directory holding `train.yaml` and the config groups."""
    return (Path(__file__).resolve().parents[1] / "conf").resolve()


def check_writable(target: Path) -> None:
    """Fail in a second, not after minutes of loading a model or scoring: `target`'s directory can be created
    and written (a UserError naming `target` otherwise)."""
    import os
    import tempfile

    from text2sql.errors import UserError

    target = Path(target).expanduser()
    parent = target.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserError(f"cannot write {target}: {err.strerror or err}") from None
