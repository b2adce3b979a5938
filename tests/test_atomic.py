"""text2sql/atomic.py: a file or directory is replaced whole or not at all, and no temp file is left behind."""

from __future__ import annotations

import pytest

from text2sql.atomic import atomic_path


def test_a_file_is_replaced_only_when_its_writer_finishes(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            assert tmp.parent == tmp_path and tmp.name.startswith(".metrics.json.") and tmp.suffix == ".tmp"
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    with atomic_path(target, fsync=True) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # readers still see the old file while the new one is written
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_directory_replaces_a_directory_or_a_file_whole(tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "stale.bin").write_text("x")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "model.safetensors").write_text("weights")
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
    with pytest.raises(OSError):
        with atomic_path(out) as tmp:
            tmp.mkdir()
            raise OSError("disk full")
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
    single = tmp_path / "file"
    single.write_text("a file where the dir goes")
    with atomic_path(single) as tmp:
        tmp.mkdir()
    assert single.is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["file", "merged"]
