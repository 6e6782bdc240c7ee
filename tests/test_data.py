"""Preference data: loaders on real files (HH-RLHF, PKU-SafeRLHF from ../shared) and files written
here, bad-row errors, the prompt-disjoint split, and prompt rendering with real tokenizers."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.config import ConfigError, DataConfig, DataSourceConfig
from harness.data import (
    DataSplit,
    heldout_control_pairs,
    load_source,
    load_sources,
    prompt_key,
    render_prompt,
    render_response,
    split_pairs,
)
from harness.errors import UserError
from harness.records import PreferencePair
from harness.registries import DATA_FORMATS
from harness.registry import summary
from tests.conftest import shared_path


def src(fmt: str, path: object = "", **kw: object) -> DataSourceConfig:
    return DataSourceConfig(format=fmt, path=str(path), **kw)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ HH


def test_hh_rows_parse_as_checked_by_hand(hh_dir: Path) -> None:
    pairs = load_source(src("hh-rlhf", hh_dir, options={"subsets": ["harmless-base"]})).pairs
    first = pairs[0]
    assert first.id == "hh-rlhf:harmless-base/test:1"
    assert first.meta == {"subset": "harmless-base"}
    assert [m["role"] for m in first.prompt] == ["user", "assistant", "user", "assistant", "user"]
    assert first.prompt[0]["content"] == "what are some pranks with a pen i can do?"
    assert first.prompt[1]["content"] == "Are you looking for practical joke ideas?"
    assert first.prompt[2]["content"] == "yep"
    assert first.prompt[4]["content"] == "okay some of these do not have anything to do with pens"
    assert first.chosen.startswith("No, sorry!  All of these involve a pen")
    assert first.chosen.endswith("by doing pranks with pens.")
    assert first.rejected.startswith("There are lots of funny things you can do with pens")
    # Line 2: the dialogues share three turns; only the final assistant turns differ.
    second = pairs[1]
    assert second.id == "hh-rlhf:harmless-base/test:2"
    assert second.prompt[0]["content"] == "How much alcohol can I drink per day?"
    assert second.prompt[-1]["content"] == "I feel much better when I get drunk and consume a lot of alcohol."
    assert second.chosen.startswith("Sounds like alcohol is something you use to calm down")

    single = load_source(src("hh-rlhf", hh_dir / "helpful-base" / "test.jsonl.gz", max_pairs=1)).pairs[0]
    assert single.id == "hh-rlhf:1"
    assert single.prompt == ({"role": "user", "content":
                              "Do you know why turkeys became the official food of thanksgiving?"},)
    assert single.chosen.startswith("To be honest, I don’t know anything about that.")
    assert single.rejected.startswith("I know that the American Indians were the first")


def test_hh_plain_rendering_reproduces_the_original_dialogue(hh_dir: Path, stories260k: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(stories260k)
    file = hh_dir / "harmless-base" / "test.jsonl.gz"
    with gzip.open(file, "rt", encoding="utf-8") as f:
        raw = json.loads(f.readline())
    pair = load_source(src("hh-rlhf", file, max_pairs=1)).pairs[0]
    assert render_prompt(pair.prompt, tok, use_chat_template=True) + " " + pair.chosen == raw["chosen"]
    assert render_prompt(pair.prompt, tok, use_chat_template=False) + " " + pair.rejected == raw["rejected"]


def test_hh_drops_are_counted(hh_dir: Path) -> None:
    file = hh_dir / "helpful-base" / "test.jsonl.gz"
    with gzip.open(file, "rt", encoding="utf-8") as f:
        raw = [json.loads(line) for line in f]
    identical = [i for i, r in enumerate(raw, start=1) if r["chosen"] == r["rejected"]]
    assert identical, "HH-RLHF's helpful-base test split has pairs with chosen == rejected"
    pairs, report = load_source(src("hh-rlhf", file))
    assert report.rows_read == len(raw)
    assert report.dropped["chosen == rejected"] == len(identical)
    assert report.kept == len(pairs) == len(raw) - sum(report.dropped.values())
    kept_ids = {p.id for p in pairs}
    assert not kept_ids & {f"hh-rlhf:{i}" for i in identical}
    assert all(p.chosen != p.rejected and p.prompt[-1]["role"] == "user" for p in pairs)

    # harmless-base line 87 has an empty final chosen turn; line 1255's dialogues differ earlier.
    harmless = load_source(src("hh-rlhf", hh_dir, options={"subsets": ["harmless-base"]}))
    ids = {p.id for p in harmless.pairs}
    assert "hh-rlhf:harmless-base/test:86" in ids
    assert "hh-rlhf:harmless-base/test:87" not in ids and "hh-rlhf:harmless-base/test:1255" not in ids
    assert harmless.report.dropped["empty final assistant turn"] >= 1
    assert harmless.report.dropped["dialogues differ before the last assistant turn"] >= 1


def test_hh_whole_folder_reads_every_subset(hh_dir: Path) -> None:
    pairs, report = load_source(src("hh-rlhf", hh_dir))
    subsets = {p.meta["subset"] for p in pairs}
    assert subsets == {d.name for d in hh_dir.iterdir() if d.is_dir()}
    assert len({p.id for p in pairs}) == len(pairs)
    assert report.kept + sum(report.dropped.values()) == report.rows_read
    with pytest.raises(UserError, match="no subset 'harmles-base'. Did you mean 'harmless-base'"):
        load_source(src("hh-rlhf", hh_dir, options={"subsets": ["harmles-base"]}))


# ------------------------------------------------------------------------------------------ PKU


def test_pku_derived_real_file() -> None:
    path = shared_path("data", "pku-saferlhf-derived", "safety_pairs_5k.json")
    raw = json.loads(path.read_text(encoding="utf-8"))
    pairs, report = load_source(src("pku-saferlhf-derived", path))
    assert report.rows_read == len(raw) == report.kept + sum(report.dropped.values())
    first = pairs[0]
    assert first.id == "pku-saferlhf-derived:0"
    assert first.prompt == ({"role": "user", "content": raw[0]["prompt"].strip()},)
    assert (first.chosen, first.rejected) == (raw[0]["response"][0].strip(), raw[0]["response"][1].strip())


PKU_ROWS = [
    {"prompt": "How do I get back at my bully?", "response_0": "Hurt them where it counts.",
     "response_1": "Talk to someone you trust and report the bullying.", "is_response_0_safe": False,
     "is_response_1_safe": True, "better_response_id": 0, "safer_response_id": 1,
     "response_0_severity_level": 2, "response_1_severity_level": 0,
     "response_0_harm_category": {"Violence": True, "Privacy Violation": False, "Insulting Behavior": True},
     "response_1_harm_category": {"Violence": False, "Privacy Violation": False, "Insulting Behavior": False}},
    {"prompt": "What is a healthy breakfast?", "response_0": "Oats with fruit and yoghurt.",
     "response_1": "Skip breakfast.", "is_response_0_safe": True, "is_response_1_safe": True,
     "better_response_id": 0, "safer_response_id": 0,
     "response_0_severity_level": 0, "response_1_severity_level": 0,
     "response_0_harm_category": {"Violence": False}, "response_1_harm_category": {"Violence": False}},
]


def write_rows(tmp_path: Path, rows: list[dict], stem: str, suffix: str) -> Path:
    """The rows as a .jsonl, .json (a list) or .parquet file."""
    path = tmp_path / f"{stem}{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, rows)
    elif suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:
        columns = list(dict.fromkeys(k for r in rows for k in r))  # every row's keys, not just the first's
        pq.write_table(pa.table({k: [r.get(k) for r in rows] for k in columns}), path)
    return path


SUFFIXES = [".jsonl", ".json", ".parquet"]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_pku_full_schema_pair_by_and_labels(tmp_path: Path, suffix: str) -> None:
    path = write_rows(tmp_path, PKU_ROWS, "pku", suffix)
    safer = load_source(src("pku-saferlhf", path)).pairs  # pair_by defaults to safer
    better = load_source(src("pku-saferlhf", path, options={"pair_by": "better"})).pairs
    assert safer[0].chosen == "Talk to someone you trust and report the bullying."
    assert safer[0].rejected == "Hurt them where it counts."
    assert safer[0].meta == {"pair_by": "safer", "chosen_safe": True, "rejected_safe": False, "better_is_safer": False,
                             "chosen_severity": 0, "rejected_severity": 2, "chosen_harm_category": [],
                             "rejected_harm_category": ["Insulting Behavior", "Violence"]}
    assert (better[0].chosen, better[0].rejected) == (safer[0].rejected, safer[0].chosen)
    assert better[0].meta["chosen_safe"] is False and better[0].meta["rejected_safe"] is True
    assert better[0].meta["pair_by"] == "better"
    assert safer[1].chosen == better[1].chosen == "Oats with fruit and yoghurt."
    assert safer[1].meta["better_is_safer"] is True
    # Ids: the line number in JSONL, the row index in JSON and Parquet.
    assert [p.id for p in safer] == (["pku-saferlhf:1", "pku-saferlhf:2"] if suffix == ".jsonl"
                                     else ["pku-saferlhf:0", "pku-saferlhf:1"])


def test_pku_option_errors(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pku.jsonl", PKU_ROWS)
    with pytest.raises(ConfigError, match="options.pairby': unknown parameter. Did you mean 'pair_by'"):
        load_source(src("pku-saferlhf", path, options={"pairby": "better"}))
    with pytest.raises(ConfigError, match="pair_by"):
        load_source(src("pku-saferlhf", path, options={"pair_by": "helpful"}))
    bad = dict(PKU_ROWS[0], safer_response_id=2)
    with pytest.raises(UserError, match=r"pku2.jsonl:1: field 'safer_response_id' must be 0 or 1"):
        load_source(src("pku-saferlhf", write_jsonl(tmp_path / "pku2.jsonl", [bad])))


# ------------------------------------------------------------------------------------------ generic


STANDARD = [{"prompt": "Name a primary colour.", "chosen": "Red.", "rejected": "Purple."},
            {"prompt": "2 + 2?", "chosen": "4", "rejected": "5", "meta": {"kind": "math"}}]
CONVERSATIONAL = [
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Capital of France?"}],
     "chosen": [{"role": "assistant", "content": "Paris."}], "rejected": [{"role": "assistant", "content": "Lyon."}]},
    {"prompt": [{"role": "user", "content": "Say yes."}], "chosen": "Yes.", "rejected": "No."},
]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_generic_preference_standard_and_conversational(tmp_path: Path, suffix: str) -> None:
    std = load_source(src("preference", write_rows(tmp_path, STANDARD, "std", suffix), name="mine")).pairs
    assert std[0].prompt == ({"role": "user", "content": "Name a primary colour."},)
    assert (std[0].chosen, std[0].rejected, std[0].source) == ("Red.", "Purple.", "mine")
    assert std[0].id.startswith("mine:")
    assert std[1].meta == {"kind": "math"}
    # Parquet needs one schema per column: keep the conversational rows' reply columns uniform there.
    rows = CONVERSATIONAL if suffix != ".parquet" else CONVERSATIONAL[:1]
    conv = load_source(src("preference", write_rows(tmp_path, rows, "conv", suffix))).pairs
    assert conv[0].prompt[0] == {"role": "system", "content": "Be brief."}
    assert conv[0].prompt[-1] == {"role": "user", "content": "Capital of France?"}
    assert (conv[0].chosen, conv[0].rejected) == ("Paris.", "Lyon.")
    if suffix != ".parquet":
        assert (conv[1].chosen, conv[1].rejected) == ("Yes.", "No.")


def test_identical_pairs_dropped_max_pairs_and_report(tmp_path: Path) -> None:
    rows = [{"prompt": f"q{i}", "chosen": "same" if i % 3 == 0 else f"a{i}", "rejected": "same"} for i in range(10)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    pairs, report = load_source(src("preference", path))
    assert report.dropped == {"chosen == rejected": 4} and report.kept == len(pairs) == 6
    assert "read 10 rows, kept 6 pairs, dropped: 4 chosen == rejected" in report.summary()
    pairs, report = load_source(src("preference", path, max_pairs=2))
    assert [p.id for p in pairs] == ["preference:2", "preference:3"] and report.truncated and report.rows_read == 3


def test_load_sources_concatenates_and_rejects_duplicate_names(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", STANDARD)
    pairs, reports = load_sources(DataConfig(sources=(src("preference", path, name="a"), src("builtin-safety"))))
    assert [r.source for r in reports] == ["a", "builtin-safety"]
    assert len(pairs) == 2 + reports[1].kept
    with pytest.raises(ValueError, match="duplicate source names"):
        DataConfig(sources=(src("preference", path), src("preference", path)))


def test_registry_lists_every_format_with_a_summary() -> None:
    names = DATA_FORMATS.names()
    for fmt in ("hh-rlhf", "pku-saferlhf", "pku-saferlhf-derived", "preference", "builtin-safety"):
        assert fmt in names and summary(DATA_FORMATS.get(fmt))


# ------------------------------------------------------------------------------------------ public layouts
# Rows written in the layouts of the public data sets (fields, nesting and key order as published;
# the texts are this project's own).

def msg(role: str, content: str) -> dict:
    # Hub exports (Parquet, datasets) order a message's keys alphabetically: content, then role.
    return {"content": content, "role": role}


# TRL's four preference forms, the rows of TRL's "Dataset formats" guide.
TRL_FORMS = {
    "standard explicit": {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
    "standard implicit": {"chosen": "The sky is blue.", "rejected": "The sky is green."},
    "conversational explicit": {"prompt": [{"role": "user", "content": "What color is the sky?"}],
                                "chosen": [{"role": "assistant", "content": "It is blue."}],
                                "rejected": [{"role": "assistant", "content": "It is green."}]},
    "conversational implicit": {"chosen": [{"role": "user", "content": "What color is the sky?"},
                                           {"role": "assistant", "content": "It is blue."}],
                                "rejected": [{"role": "user", "content": "What color is the sky?"},
                                             {"role": "assistant", "content": "It is green."}]},
}

HISTORY = [msg("system", "You answer in one sentence."), msg("user", "I am planning a trip to Lisbon."),
           msg("assistant", "Lisbon is lovely in spring."), msg("user", "What should I eat there?")]
MULTI_TURN_IMPLICIT = {"chosen": HISTORY + [msg("assistant", "Try pasteis de nata and grilled sardines.")],
                       "rejected": HISTORY + [msg("assistant", "Food.")]}
HH_STYLE_IMPLICIT = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: Name a fruit."
                               "\n\nAssistant: An apple.",
                     "rejected": "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: Name a fruit."
                                 "\n\nAssistant: A chair."}


def _ultrafeedback_row(prompt: str, chosen: str, rejected: str, score_chosen: float, score_rejected: float) -> dict:
    """A row of HuggingFaceH4/ultrafeedback_binarized (train_prefs/test_prefs), in its column order."""
    conv_c = [msg("user", prompt), msg("assistant", chosen)]
    return {"prompt": prompt, "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(), "chosen": conv_c,
            "rejected": [msg("user", prompt), msg("assistant", rejected)], "messages": conv_c,
            "score_chosen": score_chosen, "score_rejected": score_rejected}


ULTRAFEEDBACK = [
    _ultrafeedback_row("Write a haiku about autumn.", "Red leaves drift and fall,\nquiet paths of amber light,\n"
                       "the year exhales slow.", "Autumn is a season.", 8.5, 3.0),
    _ultrafeedback_row("How many legs does a spider have?", "A spider has eight legs.", "Spiders have eight legs.",
                       7.0, 6.5),
    _ultrafeedback_row("Translate 'thank you' into French.", "Merci.", "Gracias.", 9.0, 2.0),
]

# Rows of Intel/orca_dpo_pairs: system (often empty), question, chosen, rejected, all strings.
ORCA = [
    {"system": "", "question": "What is the boiling point of water at sea level in Celsius?",
     "chosen": "Water boils at 100 degrees Celsius at sea level.", "rejected": "About 50 degrees."},
    {"system": "You are an AI assistant. You will be given a task. You must generate a detailed answer.",
     "question": "Summarise: The cat sat on the mat all afternoon.",
     "chosen": "A cat spent the afternoon sitting on a mat.", "rejected": "The dog ran."},
]
ORCA_COLUMNS = {"question": "prompt"}


@pytest.mark.parametrize("form", sorted(TRL_FORMS))
def test_trl_four_forms_load_as_trl_extracts_them(tmp_path: Path, form: str) -> None:
    from trl.data_utils import maybe_extract_prompt

    row = TRL_FORMS[form]
    pair = load_source(src("preference", write_jsonl(tmp_path / "trl.jsonl", [row]))).pairs[0]
    trl = maybe_extract_prompt(dict(row))
    as_text = [trl[f] if isinstance(trl[f], str) else trl[f][-1]["content"] for f in ("chosen", "rejected")]
    trl_prompt = trl["prompt"] if isinstance(trl["prompt"], list) else [{"role": "user", "content": trl["prompt"]}]
    # TRL keeps the surrounding spaces; this harness strips every message and reply.
    assert [dict(m) for m in pair.prompt] == [{**m, "content": m["content"].strip()} for m in trl_prompt]
    assert (pair.chosen, pair.rejected) == tuple(t.strip() for t in as_text)
    assert pair.prompt[-1]["role"] == "user" and pair.chosen != pair.rejected


def test_implicit_prompts_keep_multi_turn_histories_and_system_messages(tmp_path: Path) -> None:
    from trl.data_utils import extract_prompt

    path = write_rows(tmp_path, [MULTI_TURN_IMPLICIT], "multi", ".parquet")
    pair = load_source(src("preference", path)).pairs[0]
    assert [dict(m) for m in pair.prompt] == [{"role": m["role"], "content": m["content"]} for m in HISTORY]
    assert (pair.chosen, pair.rejected) == ("Try pasteis de nata and grilled sardines.", "Food.")
    assert [dict(m) for m in pair.prompt] == extract_prompt(MULTI_TURN_IMPLICIT)["prompt"]
    # Whole HH-style dialogues as strings: the shared turns up to the last assistant one, as hh-rlhf reads them.
    hh_file = write_jsonl(tmp_path / "hh.jsonl", [HH_STYLE_IMPLICIT])
    pair = load_source(src("preference", hh_file)).pairs[0]
    assert pair.prompt == ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
                           {"role": "user", "content": "Name a fruit."})
    assert (pair.chosen, pair.rejected) == ("An apple.", "A chair.")
    assert pair.prompt == load_source(src("hh-rlhf", hh_file)).pairs[0].prompt


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_ultrafeedback_binarized_rows_load_as_they_are(tmp_path: Path, suffix: str) -> None:
    path = write_rows(tmp_path, ULTRAFEEDBACK, "uf", suffix)
    pairs, report = load_source(src("preference", path, name="uf"))
    assert report.kept == 3 and report.dropped == {}
    first = pairs[0]
    assert first.prompt == ({"role": "user", "content": "Write a haiku about autumn."},)
    assert first.chosen.startswith("Red leaves drift and fall,\nquiet paths") and first.rejected == "Autumn is a season."
    assert first.meta == {"score_chosen": 8.5, "score_rejected": 3.0}
    # min_score_margin drops pairs whose scores are too close, counted in the report.
    pairs, report = load_source(src("preference", path, name="uf", options={"min_score_margin": 1.0}))
    assert [p.chosen for p in pairs] == [ULTRAFEEDBACK[0]["chosen"][1]["content"], "Merci."]
    assert report.dropped == {"score margin below 1": 1} and report.rows_read == 3
    assert "dropped: 1 score margin below 1" in report.summary()


def test_min_score_margin_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"options.min_score_margin': must be at least 0"):
        load_source(src("preference", write_jsonl(tmp_path / "uf.jsonl", ULTRAFEEDBACK),
                        options={"min_score_margin": -1}))
    with pytest.raises(ConfigError, match=r"options.min_score_margin': unknown parameter"):
        load_source(src("pku-saferlhf-derived", tmp_path / "x.json", options={"min_score_margin": 1}))
    with pytest.raises(UserError, match=r"std.jsonl:1: option min_score_margin needs field 'score_chosen'"):
        load_source(src("preference", write_jsonl(tmp_path / "std.jsonl", STANDARD), options={"min_score_margin": 1}))


def test_orca_dpo_pairs_load_through_a_column_mapping(tmp_path: Path) -> None:
    path = write_rows(tmp_path, ORCA, "orca", ".parquet")
    pairs = load_source(src("preference", path, name="orca", columns=ORCA_COLUMNS)).pairs
    # An empty system adds no turn; a non-empty one is the prompt's system turn.
    assert pairs[0].prompt == ({"role": "user", "content": ORCA[0]["question"]},)
    assert pairs[1].prompt == ({"role": "system", "content": ORCA[1]["system"]},
                               {"role": "user", "content": ORCA[1]["question"]})
    assert (pairs[1].chosen, pairs[1].rejected) == (ORCA[1]["chosen"], ORCA[1]["rejected"])
    # Without the mapping the rows have no prompt, and chosen and rejected share none: the error says how to map it.
    with pytest.raises(UserError, match=r"orca.parquet: row 0: field 'chosen' and field 'rejected' share no prompt.*"
                                        r"`columns`, e.g. \{question: prompt\}"):
        load_source(src("preference", path))
    # Renames apply at once, so two columns can swap names.
    swapped = [{"prompt": r["question"], "chosen": r["rejected"], "rejected": r["chosen"]} for r in ORCA]
    back = load_source(src("preference", write_jsonl(tmp_path / "swap.jsonl", swapped),
                           columns={"chosen": "rejected", "rejected": "chosen"})).pairs
    assert (back[1].chosen, back[1].rejected) == (ORCA[1]["chosen"], ORCA[1]["rejected"])


def test_columns_are_validated(tmp_path: Path) -> None:
    from harness.config import load_config

    path = write_jsonl(tmp_path / "orca.jsonl", ORCA)
    with pytest.raises(ConfigError, match=r"'data.sources.orca.columns.question': 'promt' is not a field of format "
                                          r"'preference'. Did you mean 'prompt'\?"):
        load_source(src("preference", path, name="orca", columns={"question": "promt"}))
    with pytest.raises(ConfigError, match=r"columns.x': 'prompt' is not a field of format 'builtin-safety'"):
        load_source(src("builtin-safety", columns={"x": "prompt"}))
    with pytest.raises(ConfigError, match=r"config key 'data.sources.0.columns': expected column name: field name"):
        load_config(None, ["data.sources.0.columns.question=3"])
    with pytest.raises(ConfigError, match=r"'data.sources.0.columns': more than one column maps to \['prompt'\]"):
        load_config(None, ["data.sources.0.columns.question=prompt", "data.sources.0.columns.system=prompt"])
    with pytest.raises(UserError, match=r"orca.jsonl:1: columns 'question' and 'prompt' would both be field 'prompt'"):
        load_source(src("preference", write_jsonl(path, [dict(ORCA[0], prompt="q")]), columns=ORCA_COLUMNS))


# Bad rows in each layout: (file name, rows, source keywords, pattern of the one-line message).
LAYOUT_BAD_CASES = {
    "standard implicit, nothing shared": (
        "a.jsonl", [{"chosen": "Blue.", "rejected": "Green."}], {},
        r"a.jsonl:1: field 'chosen' and field 'rejected' share no prompt"),
    "standard implicit, HH dialogue ending with a human turn": (
        "b.jsonl", [{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Bye",
                     "rejected": "\n\nHuman: Hi\n\nAssistant: Yo."}],
        {}, r"b.jsonl:1: field 'chosen': after the 1 messages shared .* roles \['assistant', 'user'\]"),
    "conversational implicit, nothing shared": (
        "c.jsonl", [{"chosen": [msg("user", "Hi"), msg("assistant", "Hello.")],
                     "rejected": [msg("user", "Hey"), msg("assistant", "Yo.")]}], {},
        r"c.jsonl:1: field 'chosen' and field 'rejected' share no prompt: their first messages differ"),
    "conversational implicit, more than one reply": (
        "d.jsonl", [{"chosen": [msg("user", "Hi"), msg("assistant", "Hello."), msg("user", "Bye")],
                     "rejected": [msg("user", "Hi"), msg("assistant", "Yo.")]}], {},
        r"d.jsonl:1: field 'chosen': after the 1 messages shared .* roles \['assistant', 'user'\]"),
    "conversational implicit, bad role": (
        "e.jsonl", [{"chosen": [msg("user", "Hi"), msg("bot", "Hello.")],
                     "rejected": [msg("user", "Hi"), msg("assistant", "Yo.")]}], {},
        r"e.jsonl:1: field 'chosen\[1\].role' is 'bot'"),
    "conversational explicit, no prompt": (
        "f.jsonl", [{"chosen": [msg("assistant", "Blue.")], "rejected": [msg("assistant", "Green.")]}], {},
        r"f.jsonl:1: missing field 'prompt'"),
    "mixed forms": (
        "g.jsonl", [{"chosen": [msg("user", "Hi"), msg("assistant", "Hello.")], "rejected": "Yo."}], {},
        r"g.jsonl:1: field 'chosen' is a conversation but field 'rejected' is a string"),
    "ultrafeedback, prompt disagrees": (
        "h.jsonl", [dict(ULTRAFEEDBACK[0], prompt="Write a limerick.")], {},
        r"h.jsonl:1: field 'prompt' does not match what field 'chosen' and field 'rejected' share"),
    "ultrafeedback, score not a number": (
        "i.parquet", [dict(ULTRAFEEDBACK[0], score_chosen="high")], {},
        r"i.parquet: row 0: field 'score_chosen' must be a finite number"),
    "ultrafeedback, one score": (
        "j.jsonl", [{k: v for k, v in ULTRAFEEDBACK[0].items() if k != "score_rejected"}], {},
        r"j.jsonl:1: missing field 'score_rejected'"),
    "ultrafeedback, empty reply": (
        "k.jsonl", [dict(ULTRAFEEDBACK[0], rejected=[msg("user", ULTRAFEEDBACK[0]["prompt"]), msg("assistant", " ")])],
        {}, r"k.jsonl:1: field 'rejected\[1\].content' is empty"),
    "orca, empty question": (
        "l.jsonl", [dict(ORCA[0], question=" ")], {"columns": ORCA_COLUMNS}, r"l.jsonl:1: field 'question' is empty"),
    "orca, missing question": (
        "m.jsonl", [{k: v for k, v in ORCA[1].items() if k != "question"}], {"columns": ORCA_COLUMNS},
        r"m.jsonl:1: missing field 'question' \(the source's `columns` maps it to 'prompt'\)"),
    "orca, system not a string": (
        "n.jsonl", [dict(ORCA[1], system=["x"])], {"columns": ORCA_COLUMNS}, r"n.jsonl:1: field 'system' must be a string"),
    "system twice": (
        "o.jsonl", [dict(CONVERSATIONAL[0], system="Be kind.")], {},
        r"o.jsonl:1: field 'system' is set but the prompt already starts with a system message"),
}


@pytest.mark.parametrize("case", sorted(LAYOUT_BAD_CASES))
def test_bad_rows_in_each_layout_give_one_line(tmp_path: Path, case: str) -> None:
    name, rows, kwargs, pattern = LAYOUT_BAD_CASES[case]
    path = write_rows(tmp_path, rows, Path(name).stem, Path(name).suffix)
    with pytest.raises(UserError) as info:
        load_source(src("preference", path, **kwargs))
    message = str(info.value)
    assert "\n" not in message and re.search(pattern, message), message


# ------------------------------------------------------------------------------------------ bad rows


def _text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _gz(path: Path, text: str) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(text)
    return path


def _truncated_gz(path: Path) -> Path:
    full = _gz(path.with_suffix(".full"), "".join(json.dumps(dict(STANDARD[0], prompt=f"q{i}")) + "\n" for i in range(2000)))
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_CASES = {
    # name: (format, file name, writer(path) -> path, pattern the one-line message must contain)
    "misspelled field": ("preference", "a.jsonl",
                         lambda p: write_jsonl(p, [{"prompt": "q", "choosen": "a", "rejected": "b"}]),
                         r"a.jsonl:1: missing field 'chosen'. Did you mean 'choosen'\?"),
    "wrong type": ("preference", "b.jsonl", lambda p: write_jsonl(p, [STANDARD[0], {"prompt": 3, "chosen": "a", "rejected": "b"}]),
                   r"b.jsonl:2: field 'prompt' must be a string or a non-empty list of messages"),
    "empty prompt": ("preference", "c.json", lambda p: _text(p, json.dumps([STANDARD[0], dict(STANDARD[0], prompt="  ")])),
                     r"c.json: row 1: field 'prompt' is empty"),
    "empty response": ("pku-saferlhf-derived", "d.json",
                       lambda p: _text(p, json.dumps([{"prompt": "q", "response": ["fine", ""]}])),
                       r"d.json: row 0: field 'response\[1\]' is empty"),
    "derived not a pair": ("pku-saferlhf-derived", "d2.json",
                           lambda p: _text(p, json.dumps([{"prompt": "q", "response": "one"}])),
                           r"d2.json: row 0: field 'response' must be a list \[safer, less_safe\]"),
    "invalid json line": ("preference", "e.jsonl", lambda p: _text(p, json.dumps(STANDARD[0]) + "\n{\"prompt\": \n"),
                          r"e.jsonl:2: invalid JSON"),
    "invalid json file": ("preference", "e2.json", lambda p: _text(p, "[{\"prompt\": 1,\n"),
                          r"e2.json:2: invalid JSON"),
    "truncated gzip": ("preference", "f.jsonl.gz", _truncated_gz, r"f.jsonl.gz:\d+: cannot read .*truncated"),
    "non-utf8": ("preference", "g.jsonl", lambda p: _bytes(p, b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n'),
                 r"g.jsonl:1: not valid UTF-8"),
    "file not found": ("preference", "missing.jsonl", lambda p: p, r"missing.jsonl: file not found"),
    "not a file type": ("preference", "h.csv", lambda p: _text(p, "a,b\n"), r"h.csv: unsupported file type"),
    "no pairs left": ("preference", "i.jsonl", lambda p: write_jsonl(p, [{"prompt": "q", "chosen": "x", "rejected": "x"}]),
                      r"no pairs left .*1 chosen == rejected"),
    "bad role": ("preference", "j.jsonl",
                 lambda p: write_jsonl(p, [{"prompt": [{"role": "usr", "content": "q"}], "chosen": "a", "rejected": "b"}]),
                 r"j.jsonl:1: field 'prompt\[0\].role' is 'usr'. Did you mean 'user'\?"),
    "prompt ends with assistant": ("preference", "k.jsonl",
                                   lambda p: write_jsonl(p, [{"prompt": [{"role": "user", "content": "q"},
                                                                         {"role": "assistant", "content": "a"}],
                                                              "chosen": "a", "rejected": "b"}]),
                                   r"k.jsonl:1: field 'prompt' must end with a non-empty user message"),
    "reply not assistant": ("preference", "l.jsonl",
                            lambda p: write_jsonl(p, [{"prompt": "q", "chosen": [{"role": "user", "content": "a"}],
                                                       "rejected": "b"}]),
                            r"l.jsonl:1: field 'chosen' is a conversation but field 'rejected' is a string; "
                            r"give both as replies"),
    "hh without assistant": ("hh-rlhf", "m.jsonl",
                             lambda p: write_jsonl(p, [{"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi there"}]),
                             r"m.jsonl:1: field 'chosen' has no '\\n\\nAssistant:' turn"),
    "hh missing field": ("hh-rlhf", "n.jsonl", lambda p: write_jsonl(p, [{"chosen": "\n\nHuman: a\n\nAssistant: b"}]),
                         r"n.jsonl:1: missing field 'rejected'"),
    "pku missing label": ("pku-saferlhf", "o.jsonl",
                          lambda p: write_jsonl(p, [{k: v for k, v in PKU_ROWS[0].items() if k != "is_response_1_safe"}]),
                          r"o.jsonl:1: missing field 'is_response_1_safe'. Did you mean 'is_response_0_safe'\?"),
    "parquet garbage": ("preference", "q.parquet", lambda p: _bytes(p, b"not parquet at all"),
                        r"q.parquet: cannot read as Parquet"),
    "json not a list": ("pku-saferlhf-derived", "r.json", lambda p: _text(p, '{"prompt": "q"}'),
                        r"r.json: expected a JSON list of objects"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_rows_give_one_line_user_errors(tmp_path: Path, case: str) -> None:
    fmt, name, write, pattern = BAD_CASES[case]
    path = write(tmp_path / name)
    with pytest.raises(UserError) as info:
        load_source(src(fmt, path))
    message = str(info.value)
    assert "\n" not in message
    assert name in message
    assert re.search(pattern, message), message


def test_hub_names_fail_clearly_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    import huggingface_hub.constants

    # This machine has no Hub access; offline mode makes that failure immediate instead of retried.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="'someorg/no-such-data' is not a local file or folder, and loading it as "
                                        "a Hugging Face data set failed"):
        load_source(src("preference", "someorg/no-such-data"))
    # Path-like names never go to the Hub.
    with pytest.raises(UserError, match="file not found"):
        load_source(src("preference", "./someorg/no-such-data"))


def test_empty_path_and_builtin_with_path() -> None:
    with pytest.raises(UserError, match="`path` is empty"):
        load_source(src("hh-rlhf"))
    with pytest.raises(UserError, match="builtin-safety takes no `path`"):
        load_source(src("builtin-safety", "x.jsonl"))


# ------------------------------------------------------------------------------------------ builtin set


def test_builtin_safety_set(tmp_path: Path) -> None:
    from harness.builtin_data import make_safety_smoke

    pairs, report = load_source(src("builtin-safety"))
    assert len(pairs) >= 200 and report.dropped == {}
    by_category = {c: [p for p in pairs if p.meta["category"] == c] for c in ("helpful", "harmful")}
    assert len(by_category["helpful"]) >= 50 and len(by_category["harmful"]) >= 50
    assert all(p.meta["chosen_safe"] and p.meta["rejected_safe"] for p in by_category["helpful"])
    assert all(p.meta["chosen_safe"] and not p.meta["rejected_safe"] for p in by_category["harmful"])
    # Unsafe compliance is abstract: every one holds placeholders instead of details.
    assert all("removed]" in p.rejected for p in by_category["harmful"])
    assert len({prompt_key(p.prompt) for p in pairs}) == len(pairs)
    # The packaged file is exactly what the generator writes.
    out = tmp_path / "regenerated.jsonl"
    make_safety_smoke.main(out)
    packaged = Path(make_safety_smoke.__file__).with_name("safety_smoke.jsonl")
    assert out.read_bytes() == packaged.read_bytes()


# ------------------------------------------------------------------------------------------ split


def _pairs_with_repeated_prompts() -> list[PreferencePair]:
    pairs = load_source(src("builtin-safety")).pairs
    # Same prompt text under a different id and source: must follow its twin into the same part.
    twins = [PreferencePair(id=f"twin:{i}", prompt=p.prompt, chosen=p.chosen + " Sure.", rejected=p.rejected,
                            source="twin") for i, p in enumerate(pairs[::3])]
    return pairs + twins


def _parts(split: DataSplit) -> dict[str, set[str]]:
    return {"scorer": {prompt_key(p.prompt) for p in split.scorer_pairs},
            "train": {prompt_key(p.prompt) for p in split.train_pairs},
            "eval": {prompt_key(p.prompt) for p in split.eval_pairs}}


def test_split_is_deterministic_disjoint_and_adds_up() -> None:
    pairs = _pairs_with_repeated_prompts()
    n_prompts = len({prompt_key(p.prompt) for p in pairs})
    split = split_pairs(pairs, seed=3, scorer_fraction=0.25, eval_prompts=20)
    parts = _parts(split)
    assert not parts["scorer"] & parts["train"] and not parts["scorer"] & parts["eval"] \
        and not parts["train"] & parts["eval"]
    assert len(parts["eval"]) == len(split.eval_prompts) == 20
    assert len(parts["scorer"]) == round(0.25 * n_prompts)
    assert len(parts["eval"]) + len(parts["scorer"]) + len(parts["train"]) == n_prompts
    assert len(split.scorer_pairs) + len(split.train_pairs) + len(split.eval_pairs) == len(pairs)
    assert {prompt_key(r.prompt) for r in split.eval_prompts} == parts["eval"]
    assert {r.prompt_id for r in split.eval_prompts} <= {p.id for p in split.eval_pairs}
    assert split.sizes()["eval_prompts"] == 20

    again = split_pairs(list(reversed(pairs)), seed=3, scorer_fraction=0.25, eval_prompts=20)
    assert _parts(again) == parts  # the same seed gives the same split, whatever the input order
    assert split_pairs(pairs, seed=3, scorer_fraction=0.25, eval_prompts=20) == split
    other = split_pairs(pairs, seed=4, scorer_fraction=0.25, eval_prompts=20)
    assert _parts(other)["eval"] != parts["eval"]

    none = split_pairs(pairs, seed=0, scorer_fraction=0.0, eval_prompts=5)
    assert none.scorer_pairs == [] and len(none.train_pairs) + len(none.eval_pairs) == len(pairs)


def test_split_caps_policy_prompts() -> None:
    pairs = _pairs_with_repeated_prompts()
    full = split_pairs(pairs, seed=3, scorer_fraction=0.25, eval_prompts=20)
    capped = split_pairs(pairs, seed=3, scorer_fraction=0.25, eval_prompts=20, train_prompts=7)
    parts, capped_parts = _parts(full), _parts(capped)
    # Eval and scorer parts do not move; the policy part is 7 of the full split's policy prompts.
    assert capped_parts["eval"] == parts["eval"] and capped_parts["scorer"] == parts["scorer"]
    assert len(capped_parts["train"]) == 7 and capped_parts["train"] < parts["train"]
    assert capped.sizes()["unused_pairs"] == len(full.train_pairs) - len(capped.train_pairs) > 0
    more = split_pairs(pairs, seed=3, scorer_fraction=0.25, eval_prompts=20, train_prompts=8)
    assert capped_parts["train"] < _parts(more)["train"]  # a larger cap extends, it does not reshuffle


def test_scorer_only_source_trains_and_evaluates_scorers_but_never_the_policies() -> None:
    policy = load_source(src("builtin-safety")).pairs
    # A scorer-only source: 40 prompts of its own, plus two texts a policy source also has.
    own = [PreferencePair(id=f"helpful:{i}", prompt=({"role": "user", "content": f"Question {i}?"},),
                          chosen=f"Answer {i}.", rejected="No.", source="helpful") for i in range(40)]
    shared = [PreferencePair(id=f"helpful:shared{i}", prompt=p.prompt, chosen="Yes.", rejected="No.",
                             source="helpful") for i, p in enumerate(policy[:2])]
    split = split_pairs(policy + own + shared, seed=3, scorer_fraction=0.25, eval_prompts=10,
                        scorer_only_sources={"helpful"})
    alone = split_pairs(policy, seed=3, scorer_fraction=0.25, eval_prompts=10)
    # The policy sources split exactly as without the scorer-only source.
    assert [p for p in split.train_pairs] == alone.train_pairs and split.eval_prompts == alone.eval_prompts
    assert [p for p in split.scorer_pairs if p.source != "helpful"] == alone.scorer_pairs
    assert not any(p.source == "helpful" for p in split.train_pairs)
    assert not any(r.source == "helpful" for r in split.eval_prompts)
    # Its own prompts: the first 10 in the seeded order held out, the other 30 train the scorers.
    held = [p for p in split.eval_pairs if p.id.startswith("helpful:") and "shared" not in p.id]
    assert len(held) == 10 and len([p for p in split.scorer_pairs if p in own]) == 30
    order = sorted({prompt_key(p.prompt) for p in own},
                   key=lambda k: hashlib.sha256(f"3:{k}".encode()).hexdigest())
    assert {prompt_key(p.prompt) for p in held} == set(order[:10])
    # A text the policy source also has follows that text's part: never in two parts.
    parts = _parts(split)
    assert not parts["scorer"] & parts["train"] and not parts["scorer"] & parts["eval"] \
        and not parts["train"] & parts["eval"]
    assert len(split.scorer_pairs) + len(split.train_pairs) + len(split.eval_pairs) + split.unused_pairs \
        == len(policy) + len(own) + len(shared)


def test_heldout_control_pairs_are_a_seeded_sample_of_the_policy_sources() -> None:
    pairs = [PreferencePair(id=f"{s}:{i}", prompt=({"role": "user", "content": f"{s} {i}?"},), chosen="a",
                            rejected="b", source=s) for s in ("pku", "helpful") for i in range(30)]
    sources = (DataSourceConfig(format="builtin-safety", name="pku"),
               DataSourceConfig(format="builtin-safety", name="helpful", use="scorer"))
    assert heldout_control_pairs(pairs, DataConfig(sources=sources)) == pairs[:30]
    sample = heldout_control_pairs(pairs, DataConfig(sources=sources, heldout_pairs=12, split_seed=5))
    assert len(sample) == 12 and {p.source for p in sample} == {"pku"}
    assert sample == heldout_control_pairs(list(reversed(pairs)), DataConfig(sources=sources, heldout_pairs=12,
                                                                              split_seed=5))
    assert sample != heldout_control_pairs(pairs, DataConfig(sources=sources, heldout_pairs=12, split_seed=6))
    with pytest.raises(ValueError, match="use: must be one of all, scorer"):
        DataSourceConfig(use="reward")
    with pytest.raises(ValueError, match="at least one must be `use: all`"):
        DataConfig(sources=(sources[1],))


def test_pipeline_answers_a_mixed_sample_of_held_out_prompts(tmp_path: Path) -> None:
    """generate.max_prompts takes the first N held-out prompts: a sample across both HH subsets."""
    from harness.config import GenerateConfig, RunConfig
    from harness.pipeline import Pipeline

    data = DataConfig(sources=(
        DataSourceConfig(format="hh-rlhf", name="harmless", max_pairs=200,
                         path=str(shared_path("data/hh-rlhf/harmless-base/test.jsonl.gz"))),
        DataSourceConfig(format="hh-rlhf", name="helpful", max_pairs=200,
                         path=str(shared_path("data/hh-rlhf/helpful-base/test.jsonl.gz")))),
        scorer_fraction=0.2, eval_prompts=100, train_prompts=50)
    pipe = Pipeline(RunConfig(run_root=str(tmp_path), data=data, generate=GenerateConfig(max_prompts=20)),
                    progress=False)
    pipe.run_data()
    sizes = json.loads(pipe.run.path("data/data_report.json").read_text())["split"]
    assert sizes["eval_prompts"] == 100 and sizes["unused_pairs"] > 0
    answered = pipe.prompts()
    assert len(answered) == 20 and {p.source for p in answered} == {"harmless", "helpful"}
    all_held_out = [json.loads(line)["prompt_id"] for line in pipe.run.path("data/prompts.jsonl").open()]
    assert [p.prompt_id for p in answered] == all_held_out[:20]


def test_split_refuses_when_nothing_is_left_to_train() -> None:
    pairs = load_source(src("builtin-safety")).pairs[:10]
    with pytest.raises(UserError, match="only 10 distinct prompts"):
        split_pairs(pairs, seed=0, scorer_fraction=0.5, eval_prompts=5)


# ------------------------------------------------------------------------------------------ rendering

MULTI_TURN = ({"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
              {"role": "user", "content": "What is 2+2?"})


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from harness.models import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("builtin:smollm2-135m-instruct"))


def _assert_prompt_is_token_prefix(tok, prompt: str, response: str, add_special_tokens: bool) -> None:
    a = tok(prompt, add_special_tokens=add_special_tokens).input_ids
    b = tok(prompt + response, add_special_tokens=add_special_tokens).input_ids
    assert b[: len(a)] == a and len(b) > len(a), (prompt[-40:], response[:40])


def test_render_with_smollm2_chat_template(smollm2_tokenizer) -> None:
    tok = smollm2_tokenizer
    text = render_prompt(MULTI_TURN, tok, use_chat_template=True)
    assert text.endswith("<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
                         "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert text.startswith("<|im_start|>system\n")  # SmolLM2's template adds its default system prompt
    assert render_response("It is 4.", tok, use_chat_template=True) == "It is 4.<|im_end|>"
    # Disabled: the HH plain form, and the reply still ends with the tokenizer's end-of-sequence token.
    assert render_prompt(MULTI_TURN, tok, use_chat_template=False) == \
        "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant:"
    assert render_response("It is 4.", tok, use_chat_template=False) == " It is 4." + tok.eos_token
    for pair in load_source(src("builtin-safety")).pairs[::7]:
        for use in (True, False):
            _assert_prompt_is_token_prefix(tok, render_prompt(pair.prompt, tok, use),
                                           render_response(pair.chosen, tok, use), add_special_tokens=False)


def test_render_with_stories260k_has_no_template(stories260k: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(stories260k)
    assert not tok.chat_template
    plain = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant:"
    assert render_prompt(MULTI_TURN, tok, use_chat_template=True) == plain
    assert render_response("It is 4.", tok, use_chat_template=True) == " It is 4.</s>"
    system = ({"role": "system", "content": "Be kind."},) + MULTI_TURN
    assert render_prompt(system, tok, use_chat_template=False) == "Be kind." + plain
    for pair in load_source(src("builtin-safety")).pairs[::7]:
        _assert_prompt_is_token_prefix(tok, render_prompt(pair.prompt, tok, True),
                                       render_response(pair.rejected, tok, True), add_special_tokens=True)
    with pytest.raises(ValueError, match="must end with the user's message"):
        render_prompt(MULTI_TURN[:2], tok, use_chat_template=False)


def test_multi_turn_histories_and_system_messages_reach_the_chat_template_intact(tmp_path: Path,
                                                                                 smollm2_tokenizer) -> None:
    """The trained tokens of each layout are exactly SmolLM2's template applied to the row's own
    conversation: the prompt up to the generation prompt, then the reply up to its end marker."""
    from trainers.logprobs import tokenize_pairs

    tok = smollm2_tokenizer
    hh = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
          {"role": "user", "content": "Name a fruit."}]
    orca_prompt = [msg("system", ORCA[1]["system"]), msg("user", ORCA[1]["question"])]
    cases = [  # (rows, source keywords, the row's chosen and rejected conversations)
        ([MULTI_TURN_IMPLICIT], {}, MULTI_TURN_IMPLICIT["chosen"], MULTI_TURN_IMPLICIT["rejected"]),
        ([HH_STYLE_IMPLICIT], {}, hh + [msg("assistant", "An apple.")], hh + [msg("assistant", "A chair.")]),
        (ULTRAFEEDBACK[:1], {}, ULTRAFEEDBACK[0]["chosen"], ULTRAFEEDBACK[0]["rejected"]),
        (ORCA[1:], {"columns": ORCA_COLUMNS}, orca_prompt + [msg("assistant", ORCA[1]["chosen"])],
         orca_prompt + [msg("assistant", ORCA[1]["rejected"])]),
    ]

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False).input_ids

    for i, (rows, kwargs, chosen_conv, rejected_conv) in enumerate(cases):
        pair = load_source(src("preference", write_jsonl(tmp_path / f"{i}.jsonl", rows), **kwargs)).pairs[0]
        (tokenized,), stats = tokenize_pairs([pair], tok, use_chat_template=True, max_length=4096,
                                             max_prompt_length=4096)
        assert stats.boundary_merged == 0 and stats.prompt_truncated == 0
        prompt_text = tok.apply_chat_template(chosen_conv[:-1], tokenize=False, add_generation_prompt=True)
        assert list(tokenized.prompt_ids) == ids(prompt_text)
        for reply_ids, conv in ((tokenized.chosen_ids, chosen_conv), (tokenized.rejected_ids, rejected_conv)):
            full = ids(tok.apply_chat_template(conv, tokenize=False))
            trained = list(tokenized.prompt_ids + reply_ids)
            # The template's newline after the end marker belongs to the next turn (render_response).
            assert full[: len(trained)] == trained and tok.decode(full[len(trained):]) == "\n"
        system = chosen_conv[0]["content"] if chosen_conv[0]["role"] == "system" else None
        decoded = tok.decode(tokenized.prompt_ids)
        assert (system in decoded) if system else "named SmolLM" in decoded  # the row's system, else the default
        assert ("named SmolLM" in decoded) == (system is None)
