"""The import boundaries of docs/design: training code never imports evaluation code (nor vLLM),
evaluation code never imports training code, reports read only result files, and the floor of
`harness/` imports none of the three packages above it (only the roof, CLI and pipeline, does).

Imports are read with ast from the source, top-level and inside functions alike (a lazy import
is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

# The roof of harness/: the modules that import the packages above the floor.
ROOF = {"harness/cli.py", "harness/pipeline.py", "harness/scorer_stage.py", "harness/stage_commands.py"}
FORBIDDEN = {
    "trainers": {"evaluators", "reports", "vllm"},
    "evaluators": {"trainers", "reports"},
    "reports": {"trainers", "evaluators", "vllm", "torch", "transformers"},
    "harness": {"trainers", "evaluators", "reports", "vllm"},
}


def imported_packages(path: Path) -> dict[str, int]:
    """Top-level package of every import in `path` -> the line of its first import."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            found.setdefault(name.split(".")[0], node.lineno)
    return found


def modules(package: str) -> list[Path]:
    files = sorted((REPO / package).rglob("*.py"))
    return [f for f in files if str(f.relative_to(REPO)) not in ROOF and "commands" not in f.parts]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_crosses_a_boundary(package: str) -> None:
    crossings = [f"{f.relative_to(REPO)}:{line}: imports {name}"
                 for f in modules(package) for name, line in imported_packages(f).items()
                 if name in FORBIDDEN[package]]
    assert not crossings, "\n".join(crossings)


def test_the_checker_sees_lazy_imports(tmp_path: Path) -> None:
    source = tmp_path / "x.py"
    source.write_text("import os\n\ndef f():\n    from evaluators.scorers import build_scorer\n    import vllm.inputs\n")
    assert imported_packages(source) == {"os": 1, "evaluators": 4, "vllm": 5}
