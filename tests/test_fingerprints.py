"""Stage fingerprints cover the project code a stage runs and the versions of only the packages it
depends on (harness.provenance.STAGE_CODE).

The plan tests hash a copy of the project's source (PROJECT_ROOT pointed at it) and edit that copy,
so nothing in the repository changes; the model folder is a stand-in (the plan only hashes its
files). One test executes a real (data-only) run and plans it again.
"""

from __future__ import annotations

import ast
import importlib.metadata
import shutil
import sys
from pathlib import Path

import pytest

from harness import provenance
from harness.config import load_config
from harness.pipeline import Pipeline
from harness.provenance import GENERATOR_PACKAGES, PROJECT_PACKAGES, STAGE_CODE, project_modules
from tests.conftest import REPO

# Packages that never change a stage's output: config parsing, terminal display, downloads.
NEVER_CHANGE_OUTPUT = {"pyyaml", "rich", "tqdm", "huggingface-hub"}
UNITS = ("dpo-seed0", "bdpo-seed0")


@pytest.fixture
def source_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the project's Python source, the code the fingerprints hash from now on."""
    root = tmp_path / "src"
    for package in PROJECT_PACKAGES:
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "PROJECT_ROOT", root)
    return root


def edit(path: Path) -> None:
    path.write_text(path.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")


def config(tmp_path: Path, *overrides: str):
    """The embedded default run (built-in data, two variants, two trained scorers, synthetic), its
    model a stand-in folder."""
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text('{"model_type": "llama"}\n', encoding="utf-8")
    return load_config(None, [f"run_root={tmp_path / 'runs'}", f"model.path={model}", "generate.generator=transformers",
                              *overrides])


def fingerprints(cfg) -> dict[str, str]:
    return {s.name: s.fingerprint for s in Pipeline(cfg).plan()}


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    assert before.keys() == after.keys()
    return {name for name in before if before[name] != after[name]}


def downstream_of_training() -> set[str]:
    return {f"{kind}/{u}" for u in UNITS for kind in ("train", "heldout", "generate")} | {
        f"score/{u}.{s}" for u in UNITS for s in ("reward", "cost")} | {"report"}


def test_nothing_changed_changes_no_fingerprint(tmp_path, source_copy):
    cfg = config(tmp_path)
    before = fingerprints(cfg)
    assert len(before) == 18  # data, synthetic, 2 scorers, 2 x (training + held-out), 3 x (generate + 2 scores), report
    assert changed(before, fingerprints(cfg)) == set()


def test_editing_a_loss_redoes_its_training_and_everything_downstream(tmp_path, source_copy):
    cfg = config(tmp_path)
    before = fingerprints(cfg)
    edit(source_copy / "trainers" / "losses.py")
    # The synthetic experiment trains with the same registered losses; the reference and the
    # trained scorers do not run them.
    assert changed(before, fingerprints(cfg)) == downstream_of_training() | {"synthetic"}


def test_editing_the_report_code_redoes_only_the_report(tmp_path, source_copy):
    cfg = config(tmp_path)
    before = fingerprints(cfg)
    edit(source_copy / "reports" / "stats.py")
    assert changed(before, fingerprints(cfg)) == {"report"}


def test_a_package_version_redoes_only_the_stages_that_use_it(tmp_path, monkeypatch):
    cfg = config(tmp_path, "synthetic=null")
    before = fingerprints(cfg)
    real = importlib.metadata.version

    def upgraded(package: str) -> str:
        return "99.0" if package == upgrade else real(package)

    monkeypatch.setattr(provenance.importlib.metadata, "version", upgraded)
    upgrade = "matplotlib"  # the report's plots only
    assert changed(before, fingerprints(cfg)) == {"report"}
    upgrade = "accelerate"  # training only: the trained policies and what is made from them
    assert changed(before, fingerprints(cfg)) == downstream_of_training()


def test_a_real_run_is_redone_only_where_its_code_changed(tmp_path, source_copy):
    cfg = config(tmp_path, "variants=[]", "synthetic=null")
    assert Pipeline(cfg).execute() == [("data", "ran")]
    assert Pipeline(cfg).execute() == [("data", "cached")]
    edit(source_copy / "reports" / "render.py")
    edit(source_copy / "trainers" / "losses.py")
    assert Pipeline(cfg).execute(dry_run=True) == [("data", "cached")]
    edit(source_copy / "harness" / "data.py")
    assert Pipeline(cfg).execute(dry_run=True) == [("data", "would run")]


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of the non-project, non-standard-library modules a file imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in PROJECT_PACKAGES and n not in sys.stdlib_module_names and n != "__future__"}


def normal(distribution: str) -> str:
    return distribution.lower().replace("_", "-")


@pytest.mark.parametrize("kind", sorted(STAGE_CODE))
def test_every_package_a_stage_imports_is_in_its_fingerprint(kind):
    # harness.data's own file formats (datasets, pyarrow) run in the data stage only; the other
    # stages import it for prompt formatting, which its hashed source covers.
    distributions = importlib.metadata.packages_distributions()
    files = [p for name, p in project_modules(STAGE_CODE[kind].modules).items()
             if name != "harness.data" or kind == "data"]
    imported = {normal(d) for path in files for module in third_party_imports(path)
                for d in distributions.get(module, [module])}
    engines = GENERATOR_PACKAGES["vllm"] if kind in ("generate", "judge") else ()
    declared = {normal(p) for p in STAGE_CODE[kind].packages + engines}
    assert imported - NEVER_CHANGE_OUTPUT <= declared


def test_each_stage_hashes_its_own_code_and_not_the_others():
    assert "trainers.losses" in project_modules(STAGE_CODE["train"].modules)
    report = project_modules(STAGE_CODE["report"].modules)
    assert "reports.stats" in report and not any(n.startswith(("trainers", "evaluators")) for n in report)
    assert not any(n.startswith("reports") for n in project_modules(STAGE_CODE["train"].modules))
    assert all(n in project_modules(c.modules) for c in STAGE_CODE.values() for n in c.modules)
