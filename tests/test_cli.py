"""The `bdpo` command line: help, ls, validate, and one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.cli import build_parser, main


def bdpo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_every_subcommand():
    out = bdpo("--help")
    assert out.returncode == 0
    for name in ("ls", "validate"):
        assert name in out.stdout


def test_each_subcommand_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        text = p.format_help()
        assert p.description, f"{name} has no description"
        assert "usage: bdpo" in text


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
