"""Shared test fixtures. Real data and the tiny real model come from ../shared; tests that need
them skip cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BDPO_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A path inside ../shared, or skip the calling test when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} is absent (the real data and models live in ../shared)")
    return p


@pytest.fixture
def stories260k() -> Path:
    """Karpathy's TinyStories 260K-param Llama, as a Hugging Face folder."""
    return shared_path("models", "stories260k")


@pytest.fixture
def hh_dir() -> Path:
    """Anthropic HH-RLHF test splits: <subset>/test.jsonl.gz."""
    return shared_path("data", "hh-rlhf")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Built-in models are converted once per test session into a shared cache, not ~/.cache."""
    cache = os.environ.get("BDPO_TEST_CACHE") or str(tmp_path_factory.getbasetemp().parent / "bdpo-cache")
    monkeypatch.setenv("BDPO_CACHE", cache)


@pytest.fixture
def one_thread():
    """torch on one thread for the test: the 2 test cores are shared, and oversubscribed OpenMP
    threads make small models about 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
