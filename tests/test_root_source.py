"""A missing dataset root says truthfully where its path came from (issue 29: `model=codellama7b` without a Spider
root said "from given" for the config's own default)."""

from __future__ import annotations

import pytest

from text2sql.data.bird import resolve_bird_root
from text2sql.data.spider import resolve_root
from text2sql.errors import DataError


@pytest.mark.parametrize("root,env,said", [
    ("data/spider", None, "(from the default, data/spider: neither dataset.root nor $SPIDER_DIR set)"),
    (None, None, "(from the default, data/spider: neither dataset.root nor $SPIDER_DIR set)"),
    ("{tmp}/env", "{tmp}/env", "(from $SPIDER_DIR)"),      # ${oc.env:SPIDER_DIR,...} handed it over
    ("{tmp}/mine", None, "(from what was given)"),
    ("data/spider", "{tmp}/env", "(from what was given)"),  # the env var is set, so this one was typed
])
def test_spider_root_says_where_it_came_from(tmp_path, monkeypatch, root, env, said):
    monkeypatch.chdir(tmp_path)
    if env:
        monkeypatch.setenv("SPIDER_DIR", env.format(tmp=tmp_path))
    else:
        monkeypatch.delenv("SPIDER_DIR", raising=False)
    with pytest.raises(DataError) as info:
        resolve_root(root.format(tmp=tmp_path) if root else root)
    assert said in str(info.value)
    assert "from given" not in str(info.value)


def test_bird_root_from_its_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BIRD_DIR", raising=False)
    with pytest.raises(DataError, match=r"\(from the default, data/bird: neither dataset.root nor \$BIRD_DIR set\)"):
        resolve_bird_root("data/bird")
