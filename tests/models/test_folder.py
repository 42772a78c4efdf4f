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


def test_folder_is_current_reads_the_meta_version(tmp_path):
    from echorl.models.folder import folder_is_current

    out = tmp_path / "m"
    assert not folder_is_current(out, "meta.json", 1)  # missing folder
    out.mkdir()
    (out / "meta.json").write_text('{"version": 1}')
    assert folder_is_current(out, "meta.json", 1) and not folder_is_current(out, "meta.json", 2)
    (out / "meta.json").write_text("{torn")
    assert not folder_is_current(out, "meta.json", 1)
