"""The pipeline: the only module that knows the order of stages.

    data -> [synthetic] -> scorer training -> train (variant x seed) -> heldout -> generate -> score -> [judge]
         -> report

`plan()` turns a RunConfig into a list of stages, each with the fingerprint of everything it reads
(config fields, data hashes, upstream fingerprints) and of what it runs (the hash of the project
code it executes and the versions of the packages it depends on: harness.provenance.STAGE_CODE).
`execute()` runs the stages
whose fingerprint has no matching record and skips the rest, so a rerun with nothing changed does no
work, changing one variant redoes only that variant's stages, and a killed run continues where it
stopped (stages write atomically and record their fingerprint last; training and generation also
resume inside a stage). `execute(only=...)` runs chosen stages and what they read from: the
single-stage commands (`bdpo train`, `generate`, `score`, `train-scorer`) are that, so their outputs
and `bdpo run`'s are the same files under the same records. `execute(executor=...)` (`bdpo run --jobs N`,
`--executor ray`; harness/executors.py) runs the stale stages as jobs, several at once, each one stage
through `run_job` under that stage's lock, as soon as the stages it reads from (`stage_reads`) are fresh.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterator

from rich.console import Console
from rich.table import Table

from harness.config import (
    RunConfig, ScorerConfig, VariantConfig, dump_config, loss_params, sweep_fields, to_dict, variant_train_config,
)
from harness.errors import UserError
from harness.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, iter_jsonl, read_jsonl, sha256_tree
from harness.models import check_weights_safe, model_hash, resolve_model_path
from harness.provenance import GENERATOR_PACKAGES, environment, package_versions, stage_code, timestamp
from harness.records import PreferencePair, PromptRecord
from harness.rundir import RunDir, RunLock

if TYPE_CHECKING:
    from harness.executors import Executor

REFERENCE = "reference"
TRAINED_SCORER = "train:"
# The held resource of the generation stages: the engine pool (evaluators/engines.py).
ENGINES = "engines"


@dataclass
class Stage:
    name: str
    inputs: dict[str, Any]
    outputs: list[str]
    action: Callable[[], None]
    # Folders of partial work the stage resumes from; cleared when they came from other inputs.
    workdirs: list[str] = field(default_factory=list)
    # Names of the run-wide resources (a generation engine, a scorer model) the action uses: the
    # pipeline keeps each loaded until no remaining stage uses it.
    uses: tuple[str, ...] = ()
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        self.fingerprint = RunDir.fingerprint(self.inputs)


@dataclass(frozen=True)
class Unit:
    """One trained policy (`<variant>-seed<seed>`), or the untrained reference."""

    name: str
    variant: VariantConfig | None
    seed: int | None


def units_of(cfg: RunConfig) -> list[Unit]:
    return [Unit(f"{v.name}-seed{s}", v, s) for v in cfg.variants for s in cfg.variant_seeds(v)]


def judge_partners(cfg: RunConfig) -> dict[str, str]:
    """Unit -> the baseline unit the judge compares it with: the baseline's unit of the same seed (units
    whose seed the baseline lacks are not judged); the reference against the baseline's first seed."""
    baseline = {u.seed: u.name for u in units_of(cfg) if u.variant is not None and u.variant.name == cfg.report.baseline}
    partners = {u.name: baseline[u.seed] for u in units_of(cfg)
                if u.variant is not None and u.variant.name != cfg.report.baseline and u.seed in baseline}
    if baseline:
        partners[REFERENCE] = baseline[min(baseline)]
    return partners


def _strings(value: Any) -> Iterator[str]:
    """Every string inside nested dicts, lists and tuples."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def stage_reads(stages: list[Stage]) -> dict[str, list[str]]:
    """Stage name -> the names of the stages it reads from directly.

    A stage reads from exactly the stages whose fingerprints are among its inputs: the link that
    makes a change upstream redo it is also the order in which they must run.
    """
    # Stages with equal inputs (two variants that differ only in name) share a fingerprint: take all.
    by_fingerprint: dict[str, list[str]] = {}
    for s in stages:
        by_fingerprint.setdefault(s.fingerprint, []).append(s.name)
    return {s.name: [n for x in _strings(s.inputs) for n in by_fingerprint.get(x, ())] for s in stages}


def with_upstream(stages: list[Stage], wanted: Collection[str]) -> list[Stage]:
    """The stages named in `wanted` and every stage they read from, directly or not, in plan order."""
    names = {s.name for s in stages}
    unknown = sorted(set(wanted) - names)
    if unknown:
        raise UserError(f"no stage {', '.join(unknown)} in this config's plan (stages: {', '.join(sorted(names))}).")
    reads = stage_reads(stages)
    keep: set[str] = set()
    todo = list(wanted)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo += reads[name]
    return [s for s in stages if s.name in keep]


def run_settings(cfg: RunConfig) -> dict[str, Any]:
    """The config as the report's fingerprint sees it: all of it but `resources`, which only places
    stages on machines (--executor ray) and never changes what they write."""
    return {k: v for k, v in to_dict(cfg).items() if k != "resources"}


def _source_hash(path: str) -> str:
    p = Path(path).expanduser()
    return sha256_tree(p) if path and p.exists() else f"name:{path}"


class Pipeline:
    def __init__(self, cfg: RunConfig, console: Console | None = None, progress: bool = True) -> None:
        self.cfg = cfg
        self.run = RunDir(Path(cfg.run_root) / cfg.experiment)
        self.console = console or Console(stderr=True)
        self.progress = progress
        self.versions = package_versions()
        self._model_path: str | None = None
        self._model_hash: str | None = None
        # Engines and scorer models shared by the stages of this run (see `held`).
        self._held: dict[str, Any] = {}
        self._code: dict[str, dict[str, Any]] = {}

    # ---------------------------------------------------------------- inputs shared by stages
    def model_path(self) -> str:
        if self._model_path is None:
            self._model_path = resolve_model_path(self.cfg.model.path)
            # Refused before any stage runs, not after the data and scorer stages.
            check_weights_safe(self._model_path, self.cfg.model.allow_pickle_weights)
        return self._model_path

    def model_hash(self) -> str:
        if self._model_hash is None:
            self._model_hash = model_hash(self.model_path())
        return self._model_hash

    def data_hashes(self) -> dict[str, str]:
        from importlib import resources

        from harness.data import source_name

        # Sources without a path are built into the package (harness/builtin_data).
        builtin = str(resources.files("harness.builtin_data"))
        return {source_name(s): _source_hash(s.path or builtin) for s in self.cfg.data.sources}

    def code(self, kind: str) -> dict[str, Any]:
        """The code inputs of a stage kind (harness.provenance.STAGE_CODE): its project code's hash and
        the versions of the packages it depends on (for generation and the judge, with the chosen engine's)."""
        if kind not in self._code:
            generator = {"generate": self.cfg.generate.generator,
                         "judge": self.cfg.judge.generator if self.cfg.judge else None}.get(kind)
            engine = GENERATOR_PACKAGES.get(generator, ()) if generator else ()
            self._code[kind] = stage_code(kind, self.versions, engine)
        return self._code[kind]

    # ---------------------------------------------------------------- the plan
    def plan(self) -> list[Stage]:
        cfg = self.cfg
        stages: list[Stage] = []
        data_stage = Stage("data", {"data": to_dict(cfg.data), "hashes": self.data_hashes(), **self.code("data")},
                           ["data/train_pairs.jsonl", "data/scorer_pairs.jsonl", "data/eval_pairs.jsonl",
                            "data/prompts.jsonl", "data/data_report.json"], self.run_data)
        stages.append(data_stage)
        if cfg.synthetic is not None:
            stages.append(Stage("synthetic", {"synthetic": to_dict(cfg.synthetic), **self.code("synthetic")},
                                ["synthetic/results.json", "synthetic/table.md"], self.run_synthetic))
        if not cfg.variants:
            return stages

        scorer_fp: dict[str, str] = {}
        for s in cfg.scorers:
            if s.path == TRAINED_SCORER:
                st = Stage(f"scorer/{s.name}", {"scorer": to_dict(s), "data": data_stage.fingerprint,
                                                **self.code("scorer")},
                           [f"scorers/{s.name}/scorer.json"], lambda s=s: self.train_scorer(s))
                stages.append(st)
                scorer_fp[s.name] = st.fingerprint
            else:
                scorer_fp[s.name] = model_hash(s.path)  # memoised: a 7B scorer is not rehashed each run

        model = {"path": cfg.model.path, "hash": self.model_hash(), **to_dict(cfg.model)}
        policy_fp = {REFERENCE: RunDir.fingerprint({"model": model})}
        for u in units_of(cfg):
            assert u.variant is not None and u.seed is not None
            st = Stage(f"train/{u.name}", {
                "model": model, "train": to_dict(variant_train_config(cfg, u.variant)), "loss": u.variant.loss,
                "params": u.variant.params, "seed": u.seed, "data": data_stage.fingerprint, **self.code("train"),
            }, [f"checkpoints/{u.name}/train_record.json"], lambda u=u: self.train(u), [f"checkpoints/{u.name}"])
            stages.append(st)
            policy_fp[u.name] = st.fingerprint

        # The positive control: each trained unit's implicit reward on the eval split's pairs.
        heldout_fp = {}
        for u in units_of(cfg):
            st = Stage(f"heldout/{u.name}", {"policy": policy_fp[u.name], "data": data_stage.fingerprint,
                                             **self.code("heldout")},
                       [f"heldout/{u.name}.jsonl"], lambda u=u: self.heldout(u))
            stages.append(st)
            heldout_fp[u.name] = st.fingerprint

        # Settings that change only speed, not output, stay out of the fingerprint.
        gen = {k: v for k, v in to_dict(cfg.generate).items()
               if k not in ("generator", "batch_size", "tensor_parallel_size", "engine_reuse")}
        gen_fp = {}
        for name, pfp in policy_fp.items():
            st = Stage(f"generate/{name}", {"policy": pfp, "generate": gen, "data": data_stage.fingerprint,
                                            "use_chat_template": cfg.model.use_chat_template, **self.code("generate")},
                       [f"generations/{name}.jsonl"], lambda name=name: self.generate(name), uses=(ENGINES,))
            stages.append(st)
            gen_fp[name] = st.fingerprint

        score_fps = {}
        for name, gfp in gen_fp.items():
            for s in cfg.scorers:
                st = Stage(f"score/{name}.{s.name}", {"generations": gfp, "scorer": scorer_fp[s.name],
                                                      "config": to_dict(s), **self.code("score")},
                           [f"scores/{name}.{s.name}.jsonl"], lambda name=name, s=s: self.score(name, s),
                           uses=(f"scorer:{s.name}",))
                stages.append(st)
                score_fps[st.name] = st.fingerprint

        judge_fps = {}
        if cfg.judge is not None:
            from evaluators.judge import judge_inputs

            judge = judge_inputs(cfg.judge)  # checked now, not after training
            for name, partner in judge_partners(cfg).items():
                st = Stage(f"judge/{name}", {"generations": gen_fp[name], "baseline_generations": gen_fp[partner],
                                             "baseline_unit": partner, "judge": judge, "data": data_stage.fingerprint,
                                             **self.code("judge")},
                           [f"judgments/{name}.jsonl"], lambda name=name, partner=partner: self.judge(name, partner))
                stages.append(st)
                judge_fps[st.name] = st.fingerprint

        stages.append(Stage("report", {"scores": score_fps, "train": {k: v for k, v in policy_fp.items()},
                                       "heldout": heldout_fp, **({"judgments": judge_fps} if judge_fps else {}),
                                       "report": to_dict(cfg.report), "config": run_settings(cfg), **self.code("report")},
                            ["results.json", "report/index.html"], self.report))
        return stages

    # ---------------------------------------------------------------- running
    def execute(self, dry_run: bool = False, only: Collection[str] | None = None,
                executor: Executor | None = None) -> list[tuple[str, str]]:
        """Run (or, with dry_run, only list) the plan; returns (stage, 'cached'|'ran'|'would run').
        `only`: run just these stages (by name) and the ones they read from (see with_upstream).
        `executor` (harness/executors.py: `--jobs N`, `--executor ray`): the stale stages run as jobs,
        several at once, each as soon as the stages it reads from are fresh. None: one after another
        in this process, sharing one generation engine and each scorer model between stages."""
        stages = self.plan() if only is None else with_upstream(self.plan(), only)
        status = [(s, self.run.is_fresh(s.name, s.fingerprint)) for s in stages]
        if dry_run:
            return [(s.name, "cached" if fresh else "would run") for s, fresh in status]
        with RunLock(self.run.root):
            removed = self.run.remove_stale_temporaries()
            if removed:
                self.console.print(f"removed {removed} temporary file(s) left by an interrupted run")
            self.write_config_and_manifest()
            todo = [s for s, fresh in status if not fresh]
            done: list[tuple[str, str]] = [(s.name, "cached") for s, fresh in status if fresh]
            if executor is not None:
                return done + executor.run_stages(todo, stage_reads(stages), self.run, self.console)
            try:
                for i, stage in enumerate(todo, start=1):
                    self.console.rule(f"[bold]stage {i}/{len(todo)}[/]: {stage.name}")
                    start = time.monotonic()
                    self.run_stage(stage)
                    # Free what no later stage uses (an engine's memory and core, before scoring).
                    self.release(keep={r for later in todo[i:] for r in later.uses})
                    self.console.print(f"[green]done[/] {stage.name} in {time.monotonic() - start:.1f} s")
                    done.append((stage.name, "ran"))
            finally:
                self.release()
        return done

    def run_stage(self, stage: Stage) -> None:
        """Run one stage: note its start, do its work, record its fingerprint last."""
        self.run.begin(stage.name, stage.fingerprint, stage.workdirs)
        stage.action()
        self.run.record(stage.name, stage.fingerprint, stage.inputs, stage.outputs)

    def run_job(self, name: str, fingerprint: str) -> str:
        """Run stage `name` as one job of a parallel run (harness/worker.py), under the stage's lock;
        'cached' when another job made it fresh meanwhile, else 'ran'. `fingerprint` is the stage's as
        the coordinating `bdpo run` planned it: a different one here (other code, package versions,
        data or model files on this machine) is refused, since the coordinator would never find the
        record fresh."""
        stage = {s.name: s for s in self.plan()}.get(name)
        if stage is None:
            raise UserError(f"no stage {name} in this config's plan.")
        if stage.fingerprint != fingerprint:
            raise UserError(f"stage {name}: its inputs on {platform.node()} differ from the coordinating "
                            "bdpo run's (project code, package versions, data or model files). Install the same "
                            "bdpo-harness and packages on every machine and keep the run directory, data and "
                            "models on a filesystem they all share.")

        def waiting(holder: str) -> None:
            self.console.print(f"stage {name}: waiting for pid {holder}, which is writing it (this job is pid "
                               f"{os.getpid()})", markup=False, highlight=False, soft_wrap=True)

        with self.run.stage_lock(name, waiting):
            if self.run.is_fresh(name, fingerprint):
                return "cached"
            try:
                self.run_stage(stage)
            finally:
                self.release()
        return "ran"

    def held(self, key: str, build: Callable[[], Any]) -> Any:
        """The run-wide resource `key` (built on first use), kept until `release`."""
        if key not in self._held:
            self._held[key] = build()
        return self._held[key]

    def release(self, keep: Collection[str] = ()) -> None:
        """Close (engines) or drop (scorers) every held resource not in `keep`."""
        import gc

        dropped = [k for k in self._held if k not in keep]
        for key in dropped:
            resource = self._held.pop(key)
            close = getattr(resource, "close", None)
            if close is not None:
                close()
        if dropped:
            gc.collect()

    def write_config_and_manifest(self) -> None:
        cfg = self.cfg
        atomic_write_text(self.run.path("config.yaml"), dump_config(cfg))
        sweeps = sweep_fields(cfg) if cfg.variants else {}
        # Params with the loss's defaults filled in: the report reads beta from them.
        units = [{"unit": u.name, "variant": u.variant.name, "seed": u.seed, "loss": u.variant.loss,
                  "params": loss_params(u.variant), "train": u.variant.train, "sweep": sweeps[u.variant.name]}
                 for u in units_of(cfg) if u.variant is not None]
        units.append({"unit": REFERENCE, "variant": REFERENCE, "seed": None, "loss": None, "params": {}, "train": {},
                      "sweep": {}})
        manifest = {
            "experiment": cfg.experiment, "baseline": cfg.report.baseline, "units": units,
            "scorers": [{"name": s.name, "score_type": s.score_type, "threshold": s.threshold} for s in cfg.scorers],
            "config": to_dict(cfg), "provenance": environment(), "data_hashes": self.data_hashes(),
            "model_hash": self.model_hash() if cfg.variants else "",
            "seeds": sorted({u["seed"] for u in units if u["seed"] is not None}),
            "timestamps": {"written": timestamp()},
        }
        atomic_write_json(self.run.path("manifest.json"), manifest)

    # ---------------------------------------------------------------- stage actions
    def run_data(self) -> None:
        from harness.data import load_sources, split_data

        pairs, reports = load_sources(self.cfg.data)
        split = split_data(pairs, self.cfg.data)
        for r in reports:
            self.console.print(r.summary())
        self.console.print(f"split: {split.sizes()}")
        atomic_write_jsonl(self.run.path("data/train_pairs.jsonl"), [p.to_dict() for p in split.train_pairs])
        atomic_write_jsonl(self.run.path("data/scorer_pairs.jsonl"), [p.to_dict() for p in split.scorer_pairs])
        atomic_write_jsonl(self.run.path("data/eval_pairs.jsonl"), [p.to_dict() for p in split.eval_pairs])
        atomic_write_jsonl(self.run.path("data/prompts.jsonl"), [to_dict(r) for r in split.eval_prompts])
        atomic_write_json(self.run.path("data/data_report.json"),
                          {"sources": [r.to_dict() for r in reports], "split": split.sizes()})

    def pairs(self, name: str) -> list[PreferencePair]:
        path = self.run.path("data", f"{name}.jsonl")
        return [PreferencePair.from_dict(row, f"{path}") for row in read_jsonl(path)]

    def prompts(self) -> list[PromptRecord]:
        """The held-out prompts the policies answer: the first generate.max_prompts of data/prompts.jsonl."""
        rows = read_jsonl(self.run.path("data/prompts.jsonl"))[: self.cfg.generate.max_prompts]
        return [PromptRecord(r["prompt_id"], tuple(r["prompt"]), r.get("source", ""), r.get("meta", {})) for r in rows]

    def run_synthetic(self) -> None:
        from reports.synthetic import print_table, write_synthetic_report
        from trainers.synthetic import run_synthetic

        results = run_synthetic(self.cfg.synthetic, self.run.path("synthetic"), progress=self.progress)
        paths = write_synthetic_report(self.run.path("synthetic", "results.json"))
        print_table(results, self.console)
        self.console.print("synthetic report: " + ", ".join(str(p) for p in paths.values()), highlight=False,
                           soft_wrap=True)

    def train_scorer(self, s: ScorerConfig) -> None:
        from harness.scorer_stage import train_scorer

        pairs = self.pairs("scorer_pairs")
        if s.train_sources:
            pairs = [p for p in pairs if p.source in s.train_sources]
        if not pairs:
            raise UserError(f"scorer '{s.name}': no scorer-training pairs (data.scorer_fraction is "
                            f"{self.cfg.data.scorer_fraction}; train_sources {list(s.train_sources)}). "
                            "Raise data.scorer_fraction or give the scorer a model path.")
        eval_pairs = [p for p in self.pairs("eval_pairs") if not s.train_sources or p.source in s.train_sources]
        train_scorer(s, pairs, eval_pairs, self.run.path("scorers", s.name), seed=self.cfg.data.split_seed,
                     progress=self.progress, overwrite=True)

    def train(self, u: Unit) -> None:
        from trainers.trainer import train_policy

        assert u.variant is not None and u.seed is not None
        train_policy(self.cfg.model, variant_train_config(self.cfg, u.variant), u.variant, self.pairs("train_pairs"),
                     self.run.path("checkpoints", u.name), u.seed, self.run.path("cache"), progress=self.progress)

    def heldout(self, u: Unit) -> None:
        from harness.data import heldout_control_pairs
        from trainers.heldout import heldout_rows

        assert u.variant is not None
        rows = heldout_rows(self.cfg.model, variant_train_config(self.cfg, u.variant),
                            self.run.path("checkpoints", u.name),
                            heldout_control_pairs(self.pairs("eval_pairs"), self.cfg.data),
                            float(loss_params(u.variant).get("beta", 1.0)), self.run.path("cache"),
                            progress=self.progress)
        atomic_write_jsonl(self.run.path("heldout", f"{u.name}.jsonl"), rows)

    def policy_path(self, name: str) -> str:
        """The unit's folder (a LoRA adapter or a full checkpoint), or the base model for the reference."""
        return self.model_path() if name == REFERENCE else str(self.run.path("checkpoints", name))

    def generate(self, name: str) -> None:
        from evaluators.engines import Policy, engine_pool
        from evaluators.generation_cache import generate_to_file
        from evaluators.generators import context_length

        # One engine per base model for all of the run's generation stages; this unit's weights go into it.
        pool = self.held(ENGINES, lambda: engine_pool(self.cfg.model, self.cfg.generate, console=self.console,
                                                      scratch=self.run.path("cache")))
        policy = Policy(self.policy_path(name), base=self.model_path())
        generator = pool.generator(policy)
        prompts = self.fitted_prompts(generator.tokenizer, context_length(generator.config))
        generate_to_file(generator, prompts, self.run.path("generations", f"{name}.jsonl"),
                         self.cfg.generate, use_chat_template=self.cfg.model.use_chat_template,
                         progress=self.progress, model_sha=policy.content_hash())

    def fitted_prompts(self, tokenizer: Any, context: int | None) -> list[PromptRecord]:
        """Evaluation prompts shortened to the generation budget (earliest turns dropped first)."""
        from harness.data import fit_prompt

        gen = self.cfg.generate
        budget = gen.max_prompt_tokens or (context - gen.max_new_tokens if context else None)
        if budget is None:
            return self.prompts()
        fitted, cut = [], 0
        for p in self.prompts():
            prompt, was_cut = fit_prompt(p.prompt, tokenizer, self.cfg.model.use_chat_template, budget)
            cut += was_cut
            fitted.append(PromptRecord(p.prompt_id, prompt, p.source, p.meta))
        if cut:
            self.console.print(f"{cut} of {len(fitted)} prompts shortened to {budget} tokens (earliest turns dropped)")
        return fitted

    def scorer_path(self, s: ScorerConfig) -> str:
        return str(self.run.path("scorers", s.name)) if s.path == TRAINED_SCORER else s.path

    def score(self, name: str, s: ScorerConfig) -> None:
        from evaluators.scorers import ScoreError, build_scorer

        prompts = {p.prompt_id: p.prompt for p in self.prompts()}
        gens_path = self.run.path("generations", f"{name}.jsonl")
        lines, rows = zip(*iter_jsonl(gens_path))
        # Loaded once per run and kept for every unit's score stage of this scorer.
        scorer = self.held(f"scorer:{s.name}", lambda: build_scorer(s, self.scorer_path(s)))
        inputs = ([prompts[r["prompt_id"]] for r in rows], [r["response"] for r in rows])
        try:
            values = scorer.score(*inputs)
        except ScoreError as e:  # name the generation the bad score belongs to
            raise UserError(f"{gens_path}:{lines[e.row]}: scorer {e.scorer}: {e.reason} "
                            f"(prompt_id {rows[e.row]['prompt_id']!r}).") from None
        extra = scorer.metadata(*inputs) or [{}] * len(rows)  # e.g. the category a guard names
        atomic_write_jsonl(self.run.path("scores", f"{name}.{s.name}.jsonl"),
                           [{"prompt_id": r["prompt_id"], "sample_idx": r["sample_idx"], "score": v, **m}
                            for r, v, m in zip(rows, values, extra)])

    def judge(self, name: str, partner: str) -> None:
        from evaluators.judge import judge_generations

        assert self.cfg.judge is not None
        unit_path, base_path = self.run.path("generations", f"{name}.jsonl"), self.run.path("generations", f"{partner}.jsonl")
        rows = judge_generations(self.cfg.judge, {p.prompt_id: p.prompt for p in self.prompts()}, read_jsonl(unit_path),
                                 read_jsonl(base_path), partner, f"{unit_path} vs {base_path}", console=self.console)
        atomic_write_jsonl(self.run.path("judgments", f"{name}.jsonl"), rows)

    def report(self) -> None:
        from reports.build import build_report

        build_report(self.run.root)


def print_statuses(statuses: list[tuple[str, str]], title: str, console: Console) -> None:
    """The table of what `execute` did (or would do) with each stage."""
    table = Table(title=title)
    table.add_column("stage")
    table.add_column("status")
    for name, status in statuses:
        table.add_row(name, {"cached": "[dim]cached[/]", "ran": "[green]ran[/]"}.get(status, f"[yellow]{status}[/]"))
    console.print(table)


def summarize(run_root: Path, console: Console) -> None:
    """The leaderboard's headline numbers in the terminal, read back from results.json."""
    from harness.io import read_json

    results_path = run_root / "results.json"
    if not results_path.exists():
        return
    leaderboard = read_json(results_path)["leaderboard"]
    headline = (".mean", ".safe_rate", ".win_vs_baseline")
    names = [k for k in leaderboard[0]["metrics"] if k.endswith(headline) and not k.startswith(("train.", "length."))]
    table = Table(title=f"leaderboard (95% CI): {run_root / 'report' / 'leaderboard.md'}")
    table.add_column("variant", style="bold")
    for name in names:
        table.add_column(name, justify="right")
    for row in leaderboard:
        cells = []
        for name in names:
            m = row["metrics"].get(name)
            cells.append("—" if not m else f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]")
        table.add_row(row["variant"], *cells)
    console.print(table)
