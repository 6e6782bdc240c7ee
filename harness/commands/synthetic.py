"""`bdpo synthetic [CONFIG] [overrides]`: the paper's synthetic experiment (Section 6.1) on a 20x20 grid."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

NAME = "synthetic"
HELP = ("Run the synthetic experiment: DPO, bDPO and naive bDPO (or any registered losses: "
        "configs/synthetic-family.yaml) on a tabular 20x20 grid for every mask rate and many seeds; "
        "write results.json, a markdown table and plots.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML run config; its `synthetic:` section is used "
                                                  "(default: the embedded default, else the built-in defaults)")
    parser.add_argument("overrides", nargs="*",
                        help="keys of the synthetic section, e.g. n_seeds=5 steps=500 mask_rates=[0,0.4] "
                             "methods.bdpo.params.clip=0.3 (a leading 'synthetic.' is optional)")
    parser.add_argument("--methods", help="comma-separated names: run only these of the config's methods "
                                          "(the baseline among them), e.g. dpo,simpo,nca")
    parser.add_argument("--out", help="run directory (default: <run_root>/synthetic, i.e. runs/synthetic)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace results in --out that came from a different config")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def load_synthetic_config(config: str | None, overrides: list[str]):
    """(run_root, SyntheticConfig) from a run config file (or the embedded default) plus overrides.

    The file's `synthetic:` section is laid over the built-in defaults before the overrides apply,
    so an override can address a default method by name (methods.bdpo.params.clip=0.3).
    """
    from harness.config import (
        ConfigError, RunConfig, SyntheticConfig, parse_override, from_dict, load_dict, set_dotted,
        split_config_arg, to_dict,
    )

    path, overrides = split_config_arg(config, overrides)
    data = load_dict(path)
    section = data.get("synthetic") or {}
    if isinstance(section, dict):
        data["synthetic"] = {**to_dict(SyntheticConfig()), **section}
    for item in overrides:
        keys, value = parse_override(item if item.startswith("synthetic.") else f"synthetic.{item}")
        set_dotted(data, keys, value, item)
    try:
        cfg = from_dict(RunConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None
    return cfg.run_root, cfg.synthetic or SyntheticConfig()


def select_methods(cfg, names: str | None):
    """The config with only the methods named in `names` (comma-separated), in the config's order."""
    import dataclasses

    from harness.config import ConfigError
    from harness.registry import suggest

    if not names:
        return cfg
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = [m.name for m in cfg.methods]
    for name in wanted:
        if name not in known:
            raise ConfigError(f"--methods: '{name}' is not a method of this config.{suggest(name, known)} "
                              f"Known: {', '.join(known)}.")
    if cfg.baseline not in wanted:
        raise ConfigError(f"--methods: must include the baseline '{cfg.baseline}' (differences are against it).")
    return dataclasses.replace(cfg, methods=tuple(m for m in cfg.methods if m.name in wanted))


def check_overwrite(results_path: Path, config: dict, overwrite: bool) -> None:
    """Refuse to replace results of a different config unless asked: nothing a user had is lost."""
    from harness.errors import UserError
    from harness.io import read_json

    if overwrite or not results_path.exists():
        return
    if read_json(results_path).get("config") != config:
        raise UserError(f"{results_path}: holds results of a different synthetic config. "
                        "Use --out DIR for a new run directory, or --overwrite to replace them.")


def run(args: argparse.Namespace) -> int:
    from harness.config import to_dict
    from harness.rundir import RunLock
    from reports.synthetic import print_table, write_synthetic_report
    from trainers.synthetic import RESULTS_FILE, run_synthetic

    run_root, cfg = load_synthetic_config(args.config, args.overrides)
    cfg = select_methods(cfg, args.methods)
    out = Path(args.out) if args.out else Path(run_root) / "synthetic"
    console = Console()
    with RunLock(out):
        check_overwrite(out / RESULTS_FILE, to_dict(cfg), args.overwrite)
        results = run_synthetic(cfg, out, progress=not args.no_progress)
        paths = write_synthetic_report(out / RESULTS_FILE)

    print_table(results, console)
    n_runs = len(cfg.methods) * cfg.n_seeds * len(cfg.mask_rates)
    console.print(f"{n_runs} runs x {cfg.steps} steps in "
                  f"{results['wall_seconds']:.1f} s")
    for path in [out / RESULTS_FILE, *paths.values()]:
        console.print(f"  {path}", highlight=False, soft_wrap=True)  # paths stay copy-pastable
    return 0
