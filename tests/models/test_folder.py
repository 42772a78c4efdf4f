"""echorl.models.folder.cache_root: the one cache-folder rule."""

from __future__ import annotations

from pathlib import Path

from echorl.models import smollm2, tiny
from echorl.models.folder import cache_root


def test_cache_root_rule(monkeypatch, tmp_path):
    monkeypatch.setenv("ECHORL_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    assert tiny.default_cache_dir() == tmp_path / "tiny-qwen2-char"
    assert smollm2.default_cache_dir() == tmp_path / smollm2.CACHE_NAME
    monkeypatch.setenv("ECHORL_CACHE", "")  # empty counts as unset
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "echorl"
    monkeypatch.delenv("ECHORL_CACHE")
    assert cache_root() == Path(tmp_path / "home" / ".cache" / "echorl")
