"""What the single-stage commands share: they run stages of `bdpo run`'s own plan.

`bdpo train`, `bdpo generate`, `bdpo score` and `bdpo train-scorer` given a config pick their stages
(by variant, seed, scorer) from the Pipeline's plan and execute them, with whatever those stages read
from that is not yet fresh, through `Pipeline.execute`: the same code, defaults, run directory and
stage records as `bdpo run`, so what one command made the other finds cached.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from rich.console import Console

from harness.config import RunConfig, load_config, split_config_arg
from harness.errors import UserError
from harness.pipeline import REFERENCE, TRAINED_SCORER, Pipeline, print_statuses, units_of
from harness.registry import suggest


def add_run_arguments(parser: argparse.ArgumentParser, config_help: str) -> None:
    """The config, its overrides, --dry-run and --no-progress, as `bdpo run` takes them."""
    parser.add_argument("config", nargs="?", help=config_help)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=100")
    parser.add_argument("--dry-run", action="store_true", help="print what would run and what is cached, and stop")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")


def add_unit_arguments(parser: argparse.ArgumentParser, reference: bool, seed: bool) -> None:
    ref = ", or 'reference' (the untrained model)" if reference else ""
    parser.add_argument("--variant", action="append",
                        help=f"only this variant of the config (all its seeds) or unit (<variant>-seed<seed>){ref}; "
                             "repeat for several (default: all)")
    if seed:
        parser.add_argument("--seed", type=int, action="append",
                            help="only the units with this training seed (one of the config's seeds); repeat for "
                                 "several")


def load(args: argparse.Namespace) -> RunConfig:
    return load_config(*split_config_arg(args.config, args.overrides))


def select_units(cfg: RunConfig, picks: Sequence[str] | None, seeds: Sequence[int] | None = None,
                 reference: bool = False) -> list[str]:
    """Unit names (`<variant>-seed<seed>`, and `reference` when allowed) chosen by --variant (variant or
    unit names) and --seed; every unit of the config when neither is given. Unknown names are refused."""
    units = units_of(cfg)
    known = [v.name for v in cfg.variants] + [u.name for u in units] + ([REFERENCE] if reference else [])
    for name in picks or ():
        if name not in known:
            raise UserError(f"--variant {name}: no such variant or unit in the config.{suggest(name, known)} "
                            f"Known: {', '.join(known)}.")
    names = [u.name for u in units if (not picks or u.name in picks or u.variant.name in picks)
             and (not seeds or u.seed in seeds)]
    if seeds and not names:
        trained = sorted({u.seed for u in units})
        raise UserError(f"--seed {', '.join(map(str, seeds))}: no chosen unit has that seed; the config trains "
                        f"seeds {trained}. Add a seed with the override seeds=[...].")
    if reference and (not picks or REFERENCE in picks):
        names.insert(0, REFERENCE)
    if not names:
        raise UserError("the config has no variants: nothing to do (add a `variants` section).")
    return names


def select_scorers(cfg: RunConfig, scorers: Sequence[str] | None, trained_only: bool = False) -> list[str]:
    """Scorer names chosen by --scorer (all of the config's when none given)."""
    known = [s.name for s in cfg.scorers if s.path == TRAINED_SCORER or not trained_only]
    for name in scorers or ():
        if name not in known:
            what = "trained scorer (path 'train:')" if trained_only else "scorer"
            raise UserError(f"--scorer {name}: no {what} of that name in the config.{suggest(name, known)} "
                            f"Known: {', '.join(known) or 'none'}.")
    chosen = [n for n in known if not scorers or n in scorers]
    if not chosen:
        raise UserError("the config has no scorer to train: every scorer has a model path (only path 'train:' "
                        "is trained)." if trained_only else "the config has no scorers.")
    return chosen


def run_stages(cfg: RunConfig, stages: Sequence[str], args: argparse.Namespace,
               console: Console) -> tuple[Pipeline, list[tuple[str, str]]]:
    """Execute `stages` of the config's plan (and the stale stages they read from); print the table."""
    pipeline = Pipeline(cfg, console=console, progress=not args.no_progress)
    statuses = pipeline.execute(dry_run=args.dry_run, only=stages)
    print_statuses(statuses, f"{'plan' if args.dry_run else 'stages'}: {pipeline.run.root}", console)
    return pipeline, statuses


def refuse_options(args: argparse.Namespace, options: Sequence[str], mode: str) -> None:
    """A one-line error when an option of the other mode was given (None/False mean: not given)."""
    given = [o for o in options if getattr(args, o) not in (None, False, [])]
    if given:
        flags = ", ".join(f"--{o.replace('_', '-')}" for o in given)
        raise UserError(f"{flags}: not used {mode}.")
