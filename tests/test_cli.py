"""The `bdpo` command line: help, ls, validate, and one-line errors with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness.cli import build_parser, main, parse_args
from harness.config import split_config_arg


def bdpo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_every_subcommand():
    out = bdpo("--help")
    assert out.returncode == 0
    for name in ("ls", "validate"):
        assert name in out.stdout


def test_each_subcommand_has_help():
    for name, p in build_parser()[1].items():
        text = p.format_help()
        assert p.description, f"{name} has no description"
        assert "usage: bdpo" in text
        assert "(default: None)" not in text, name
        for line in " ".join(text.split()).split("--"):  # each option's help on one line
            assert line.count("(default:") <= 1, f"{name}: {line}"
        assert "--verbose" in text


@pytest.mark.parametrize("order", [
    ["validate", "train.max_steps=3", "--quiet"],
    ["validate", "--quiet", "train.max_steps=3"],
    ["--verbose", "validate", "--quiet", "train.max_steps=3", "--verbose"],
])
def test_options_and_overrides_in_any_order(order):
    args = parse_args(order)
    assert args.command == "validate" and args.quiet
    assert split_config_arg(args.config, args.overrides) == (None, ["train.max_steps=3"])
    assert args.verbose == ("--verbose" in order)


def test_train_takes_an_override_after_an_option():
    args = parse_args(["train", "configs/hh-study.yaml", "--variant", "dpo", "train.max_steps=4"])
    assert (args.config, args.variant, args.overrides) == ("configs/hh-study.yaml", ["dpo"], ["train.max_steps=4"])


QUIET_VARIABLES = ("VLLM_LOGGING_LEVEL", "TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS",
                   "TQDM_DISABLE")
LIBRARY_CHATTER = """
import logging, sys, warnings
from harness.terminal import quiet_third_party
quiet_third_party(verbose=sys.argv[1] == "verbose")
from transformers.utils import logging as hf_logging
hf_logging.get_logger("transformers.modeling_utils").warning("LOAD REPORT from a library")
warnings.warn_explicit("a library warning", UserWarning, "x.py", 1, module="torch.nn.modules")
from transformers.utils.logging import tqdm
for _ in tqdm(range(3), desc="Loading weights"):
    pass
logging.getLogger("trainers.trainer").warning("the project's own warning")
"""


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_library_logs_bars_and_warnings_are_silenced_unless_verbose(mode):
    # Without the switches an in-process `main()` of another test may have set in this environment.
    env = {k: v for k, v in os.environ.items() if k not in QUIET_VARIABLES}
    out = subprocess.run([sys.executable, "-c", LIBRARY_CHATTER, mode], capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.returncode == 0, out.stderr
    assert "the project's own warning" in out.stderr
    for chatter in ("LOAD REPORT from a library", "a library warning", "Loading weights"):
        assert (chatter in out.stderr) == (mode == "verbose"), (chatter, out.stderr)


def test_ls_lists_registered_names():
    out = bdpo("ls")
    assert out.returncode == 0, out.stderr
    for name in ("dpo", "bdpo", "nbdpo", "ipo", "smollm2-135m-instruct"):
        assert name in out.stdout


def test_ls_loss_shows_each_formula_and_parameters(monkeypatch, capsys):
    from harness.registries import LOSSES
    from harness.registry import summary

    monkeypatch.setenv("COLUMNS", "400")  # one table row per line
    assert main(["ls", "loss"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, fn in LOSSES.items():
        row = next(line for line in lines if line.split("│")[1:2] and line.split("│")[1].strip() == name)
        assert summary(fn) in row and "sft_weight=0.0" in row, row
    simpo = next(line for line in lines if "│ simpo " in line)
    assert "beta=2.0, gamma_ratio=0.25, sft_weight=0.0; no reference" in simpo
    assert "penalty=50.0" in next(line for line in lines if "│ dpop " in line)


def test_validate_good_and_bad(tmp_path):
    assert main(["validate", "--quiet"]) == 0
    out = bdpo("validate", "train.max_stepz=3")
    assert out.returncode == 2
    lines = [l for l in out.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, out.stderr
    assert "train.max_stepz" in lines[0] and "max_steps" in lines[0]


@pytest.mark.parametrize("args", [["validate", "/nonexistent/config.yaml"]])
def test_missing_config_file(args):
    out = bdpo(*args)
    assert out.returncode == 2
    assert "/nonexistent/config.yaml" in out.stderr
