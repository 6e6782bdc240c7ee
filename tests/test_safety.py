"""Safety: untrusted text is escaped in the report, nothing in it loads from the network, weights load
from safetensors only unless allowed, remote code stays off unless asked, names in a config cannot
write outside the run directory, and a diverging training stops through the CLI without writing NaN
weights. bDPO's lambda stays finite at the log-prob extremes in every dtype the trainer uses.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.cli import main
from harness.io import read_jsonl
from tests.conftest import REPO, shared_path
from tests.test_bad_inputs import copy_without_scores, one_error
from tests.test_crash_resume import EXPERIMENT, PAYLOADS, bdpo_env, clean_run, tiny_inputs
from trainers.losses import PairLogps, bdpo


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The finished tiny run of test_crash_resume: every prompt carries one of PAYLOADS."""
    return clean_run(tmp_path_factory)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_inputs(tmp_path_factory)


# --------------------------------------------------------------------------------------------
# The HTML report.
# --------------------------------------------------------------------------------------------


class Page(HTMLParser):
    """Every element with its attributes, the text of the page, and the text inside each tag name."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.open: list[str] = []
        self.text_in: dict[str, list[str]] = {}
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self.open.append(tag)

    def handle_endtag(self, tag):
        if tag in self.open:
            del self.open[len(self.open) - 1 - self.open[::-1].index(tag):]

    def handle_data(self, data):
        self.text.append(data)
        for tag in set(self.open):
            self.text_in.setdefault(tag, []).append(data)


def check_page_is_inert(page: Page) -> None:
    """One script, the page's own sample browser (no generated text in it); no frame or plugin
    element, no event handler, nothing fetched from anywhere but data: URIs."""
    tags = [tag for tag, _ in page.elements]
    assert tags.count("script") == 1, tags.count("script")
    script = "".join(page.text_in.get("script", []))
    assert script.lstrip().startswith("// The sample browser") and "alert(" not in script and "<" not in script
    assert not set(tags) & {"iframe", "frame", "object", "embed", "link", "base", "form", "svg"}, set(tags)
    for tag, attrs in page.elements:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        for name in ("src", "href", "action", "srcset", "background"):
            value = attrs.get(name)
            assert value is None or value.startswith("data:image/png;base64,"), (tag, name, value[:80])
    css = "".join(page.text_in.get("style", []))
    assert "url(" not in css and "@import" not in css


def test_prompts_with_html_from_a_real_run_are_shown_as_text(run_dir: Path):
    page = Page((run_dir / "report" / "index.html").read_text(encoding="utf-8"))
    check_page_is_inert(page)
    text = "".join(page.text)
    prompts = [r["prompt"] for r in read_jsonl(run_dir / "generations" / "reference.jsonl")]
    assert all(any(p in prompt for p in PAYLOADS) for prompt in prompts)
    for payload in PAYLOADS:
        assert payload in text  # shown, character for character, as text
    assert "injected" not in "".join(page.text_in.get("h1", []))
    images = [attrs["src"] for tag, attrs in page.elements if tag == "img"]
    assert images and all(src.startswith("data:image/png;base64,") for src in images)  # plots are inline


def test_completions_with_html_are_escaped(run_dir: Path, tmp_path: Path, capsys):
    """The real run's generations rewritten to hostile completions, then `bdpo report` on it."""
    copy = tmp_path / EXPERIMENT
    shutil.copytree(run_dir, copy)
    hostile = [f"{PAYLOADS[0]} then {PAYLOADS[1]} and {PAYLOADS[2]}", "<style>body{background:url(http://x/)}</style>",
               "<a href='javascript:alert(1)'>click</a><iframe src=//evil.example></iframe>"]
    for path in copy.glob("generations/*.jsonl"):
        rows = read_jsonl(path)
        for i, row in enumerate(rows):
            row["response"] = hostile[i % len(hostile)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main(["report", str(copy)]) == 0
    page = Page((copy / "report" / "index.html").read_text(encoding="utf-8"))
    check_page_is_inert(page)
    shown = "".join(page.text_in.get("pre", []))
    for text in hostile:
        assert text in shown
    assert sum(tag == "style" for tag, _ in page.elements) == 1  # the page's own inline CSS only


# --------------------------------------------------------------------------------------------
# Loading safety.
# --------------------------------------------------------------------------------------------


def pickled_copy(folder: Path, classifier: bool = False) -> Path:
    """The 260K model (or a 1-output classifier on it) saved as pytorch_model.bin, no safetensors."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    backbone = shared_path("models", "stories260k")
    if classifier:
        model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=1)
        model.config.pad_token_id = 0
    else:
        model = AutoModelForCausalLM.from_pretrained(backbone)
    folder.mkdir()
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # transformers 5 saves safetensors only
    AutoTokenizer.from_pretrained(backbone).save_pretrained(folder)
    assert (folder / "pytorch_model.bin").exists() and not list(folder.glob("*.safetensors"))
    return folder


def test_pickled_policy_weights_need_the_explicit_flag(tiny_config: Path, tmp_path: Path, capsys):
    model = pickled_copy(tmp_path / "pickled")
    args = ["run", str(tiny_config), f"run_root={tmp_path / 'runs'}", f"model.path={model}"]
    line = one_error(capsys, [*args, "--no-progress"])
    assert "pytorch_model.bin" in line and "can run code when loaded" in line
    assert "set model.allow_pickle_weights=true" in line
    assert not (tmp_path / "runs").exists()  # refused before any stage ran
    assert main([*args, "model.allow_pickle_weights=true", "--dry-run", "--no-progress"]) == 0


def test_pickled_scorer_weights_are_refused(run_dir: Path, tiny_config: Path, tmp_path: Path, capsys):
    copy = copy_without_scores(run_dir, tmp_path)
    scorer = pickled_copy(tmp_path / "pickled-scorer", classifier=True)
    line = one_error(capsys, ["run", str(tiny_config), f"run_root={tmp_path / 'runs'}",
                              "scorers.reward.type=hf-classifier", f"scorers.reward.path={scorer}", "--no-progress"])
    assert "pytorch_model.bin" in line and "Convert them to safetensors" in line
    assert not (copy / "scores").exists()


def remote_code_model(folder: Path, marker: Path) -> Path:
    """The 260K model whose config.json asks for custom code that, when imported, writes `marker`."""
    shutil.copytree(shared_path("models", "stories260k"), folder)
    (folder / "evil.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('remote code ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    pass\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n", encoding="utf-8")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def test_remote_code_runs_only_when_asked(tmp_path: Path):
    marker = tmp_path / "REMOTE_CODE_RAN"
    model = remote_code_model(tmp_path / "model", marker)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt_id": "p", "prompt": "Once upon a time"}) + "\n", encoding="utf-8")
    env = {**bdpo_env(), "HF_MODULES_CACHE": str(tmp_path / "hf-modules")}

    def generate(*overrides: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "harness.cli", "generate", *overrides, "--model", str(model), "--prompts",
               str(prompts), "--out", str(tmp_path / "out.jsonl"), "--generator", "transformers",
               "--max-new-tokens", "2", "--no-progress"]
        return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)

    default = generate()
    assert default.returncode == 0, default.stderr[-2000:]
    assert not marker.exists()  # the Llama classes of transformers were used; evil.py never ran
    generate("model.trust_remote_code=true")
    assert marker.exists()  # the opt-in really is what runs it


@pytest.mark.parametrize("override,key", [
    ("experiment=../escaped", "experiment"), ("experiment=a/b", "experiment"), ("experiment=..", "experiment"),
    ("variants.dpo.name=../../escaped", "variants.0.name"), ("variants.dpo.name=a/b", "variants.0.name"),
    ("variants.dpo.name=..", "variants.0.name"), ("scorers.reward.name=../x", "scorers.0.name"),
    ("scorers.reward.name=a.b", "scorers.0.name"),
])
def test_names_cannot_lead_outside_the_run_directory(override, key, tiny_config, tmp_path, capsys):
    root = tmp_path / "inside" / "runs"
    line = one_error(capsys, ["run", str(tiny_config), f"run_root={root}", override, "--no-progress"])
    assert f"config key '{key}" in line and "must be a plain name" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Numerical guard, through `bdpo run`.
# --------------------------------------------------------------------------------------------


def test_diverging_training_stops_through_the_cli_and_keeps_finite_weights(tiny_config, tmp_path, capsys):
    # A learning rate that overflows float32 on the first real update (step 1 is the warm-up at lr 0).
    line = one_error(capsys, ["run", str(tiny_config), f"run_root={tmp_path}", "scorers=[]",
                              "train.learning_rate=1e39", "--no-progress"])
    assert "training stopped at step 2: non-finite weights after the optimizer step" in line, line
    assert "(pairs hh:" in line and "the last good checkpoint is" in line and "checkpoint-1" in line
    out = tmp_path / EXPERIMENT / "checkpoints" / "dpo-seed0"
    assert not (out / "model.safetensors").exists() and not (out / "train_record.json").exists()
    assert not (tmp_path / EXPERIMENT / "stages" / "train" / "dpo-seed0.json").exists()
    saved = sorted(out.glob("checkpoint-*/model.safetensors"))
    assert [p.parent.name for p in saved] == ["checkpoint-1"]
    assert all(torch.isfinite(t).all() for t in load_file(saved[0]).values())
    # Step 2's loss was computed before the update that overflowed: logged, and finite.
    rows = read_jsonl(out / "train_log.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)


# --------------------------------------------------------------------------------------------
# bDPO's lambda at the extremes, in every dtype the trainer computes log-probs in.
# --------------------------------------------------------------------------------------------

EXTREMES = [0.0, -0.0, -1e-45, -1e-38, -1e-30, -1e-7, -1e-3, -1.0, -1e4]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("params", [{"clip": 0.3}, {"clip": 0.5}, {"clip": 0.0}, {"clip": 0.5, "lambda_from": "mean"}])
def test_bdpo_lambda_finite_at_every_extreme_pair(dtype, params):
    grid = torch.tensor([(w, l) for w in EXTREMES for l in EXTREMES], dtype=torch.float64)
    chosen = grid[:, 0].to(dtype).requires_grad_()
    rejected = grid[:, 1].to(dtype).requires_grad_()
    ref = torch.full_like(grid[:, 0], -5.0).to(dtype)
    lengths = torch.ones_like(ref)
    out = bdpo(PairLogps(chosen, rejected, ref, ref, lengths, lengths), beta=0.1, **params)
    clip = params["clip"]
    assert torch.isfinite(out.lam).all()
    assert ((out.lam >= 0.5 - clip) & (out.lam <= 0.5 + clip)).all()
    assert torch.isfinite(out.losses).all()
    grads = torch.autograd.grad(out.losses.sum(), (chosen, rejected))
    assert all(torch.isfinite(g).all() for g in grads)
    # Both log-probs exactly 0 (or -0): the limit along lw = ll, lambda = 1/2.
    both_zero = (grid[:, 0] == 0) & (grid[:, 1] == 0)
    assert (out.lam[both_zero] == 0.5).all()
