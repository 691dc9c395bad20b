"""The model cache's location and the quieting of transformers' own progress bars."""

from __future__ import annotations

from transformers.utils import logging as hf_logging

from magrpo.models.store import cache_dir, quiet_library_progress


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MAGRPO_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MAGRPO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "magrpo"


def test_library_bars_are_hidden_then_restored_unless_verbose(monkeypatch):
    monkeypatch.delenv("MAGRPO_VERBOSE", raising=False)
    hf_logging.enable_progress_bar()
    with quiet_library_progress():
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()

    hf_logging.disable_progress_bar()  # a user who turned them off keeps them off
    with quiet_library_progress():
        assert not hf_logging.is_progress_bar_enabled()
    assert not hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()

    monkeypatch.setenv("MAGRPO_VERBOSE", "1")
    with quiet_library_progress():
        assert hf_logging.is_progress_bar_enabled()
