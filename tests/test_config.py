"""Config: YAML + dotted overrides into typed frozen objects, with key-naming errors."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from tests.conftest import REPO

from harness.config import (
    ConfigError, RunConfig, TrainConfig, dump_config, from_dict, load_config, load_dict,
    split_config_arg, to_dict, variant_train_config,
)


def write(tmp_path, data) -> str:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


BASE = {
    "experiment": "t",
    "variants": [
        {"name": "dpo", "loss": "dpo", "params": {"beta": 0.1}},
        {"name": "bdpo", "loss": "bdpo", "params": {"beta": 0.1, "clip": 0.3}},
    ],
}


def test_round_trip_is_identity(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["train.learning_rate=1e-4", "variants.bdpo.params.clip=0.2"])
    assert cfg.train.learning_rate == 1e-4
    assert cfg.variants[1].params == {"beta": 0.1, "clip": 0.2}
    again = load_config(write(tmp_path, yaml.safe_load(dump_config(cfg))))
    assert again == cfg


def test_frozen(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.max_steps = 3  # type: ignore[misc]


def test_unknown_key_names_key_and_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"'train.learning_rat'.*Did you mean 'learning_rate'"):
        load_config(write(tmp_path, BASE), ["train.learning_rat=1e-4"])


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"'train.max_steps': expected int, got 'ten'"):
        load_config(write(tmp_path, BASE), ["train.max_steps=ten"])
    with pytest.raises(ConfigError, match=r"'model.trust_remote_code': expected bool"):
        load_config(write(tmp_path, BASE), ["model.trust_remote_code=1"])


def test_out_of_range_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"'train.learning_rate': must be positive"):
        load_config(write(tmp_path, BASE), ["train.learning_rate=-1"])


def test_override_by_index_and_unknown_item(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["variants.0.params.beta=0.5"])
    assert cfg.variants[0].params["beta"] == 0.5
    with pytest.raises(ConfigError, match=r"no list item 'bdp'.*Did you mean 'bdpo'"):
        load_config(write(tmp_path, BASE), ["variants.bdp.params.beta=0.5"])


def test_unknown_loss_and_parameter(tmp_path):
    bad = {**BASE, "variants": [{"name": "dpo", "loss": "dpoo"}]}
    with pytest.raises(ConfigError, match=r"variants.dpo.loss.*Did you mean 'dpo'"):
        load_config(write(tmp_path, bad))
    bad = {**BASE, "variants": [{"name": "dpo", "loss": "dpo", "params": {"betta": 1.0}}]}
    with pytest.raises(ConfigError, match=r"variants.dpo.params.betta.*Did you mean 'beta'"):
        load_config(write(tmp_path, bad))


def test_variant_train_overrides(tmp_path):
    data = {**BASE, "variants": [{"name": "dpo", "loss": "dpo", "train": {"learning_rate": 1e-6}}]}
    cfg = load_config(write(tmp_path, data))
    assert variant_train_config(cfg, cfg.variants[0]).learning_rate == 1e-6
    assert variant_train_config(cfg, cfg.variants[0]).max_steps == cfg.train.max_steps


def test_variant_seeds_override_run_seeds(tmp_path):
    from harness.pipeline import units_of

    data = {**BASE, "seeds": [0, 1, 2], "variants": [{"name": "dpo", "loss": "dpo"},
                                                     {"name": "dpo-b1", "loss": "dpo", "params": {"beta": 1.0},
                                                      "seeds": [1]}]}
    cfg = load_config(write(tmp_path, data))
    assert [u.name for u in units_of(cfg)] == ["dpo-seed0", "dpo-seed1", "dpo-seed2", "dpo-b1-seed1"]
    data["variants"][1]["seeds"] = [7]
    with pytest.raises(ConfigError, match=r"\['dpo-b1'\] share no seed with the baseline 'dpo'"):
        load_config(write(tmp_path, data))
    data["variants"][1]["seeds"] = []
    with pytest.raises(ConfigError, match=r"'variants.1.seeds': at least one seed"):
        load_config(write(tmp_path, data))


def test_invalid_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  max_steps: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config(str(p))


def test_from_dict_to_dict_inverse():
    cfg = from_dict(TrainConfig, {"max_steps": 3, "lora": {"enabled": True, "r": 4}})
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg


def test_split_config_arg():
    assert split_config_arg("train.max_steps=3", ["a=1"]) == (None, ["train.max_steps=3", "a=1"])
    assert split_config_arg(None, []) == (None, [])


def test_embedded_default_is_valid():
    cfg = load_config(None)
    assert isinstance(cfg, RunConfig)
    assert load_dict(None)["experiment"] == cfg.experiment


def test_synthetic_methods_are_checked(tmp_path):
    data = {**BASE, "synthetic": {"baseline": "x", "methods": [{"name": "x", "loss": "bdpo", "params": {"clip": 0.9}}]}}
    with pytest.raises(ConfigError, match=r"synthetic.methods.x.params.clip"):
        load_config(write(tmp_path, data))


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_are_valid(name):
    """Every config in configs/ parses and names only registered losses, formats and scorers."""
    load_config(str(REPO / "configs" / name))


# Settings a stage would refuse at run time (generation after all the training, the report after
# everything), refused at config load instead. (overrides of VALIDATED, the key the error names, a fragment)
VALIDATED = {
    "experiment": "v", "data": {"sources": [{"format": "builtin-safety"}], "scorer_fraction": 0.3},
    "variants": [{"name": "dpo", "loss": "dpo", "params": {"beta": 0.1}},
                 {"name": "bdpo", "loss": "bdpo", "params": {"beta": 0.1, "clip": 0.3}}],
    "scorers": [{"name": "reward", "path": "train:", "score_type": "reward"}],
}
REFUSED_AT_LOAD = {
    "greedy-n-samples": (["generate.n=4"], "generate.n", "identical completions"),
    "empty-stop-string": (["generate.stop=['']"], "generate.stop", "must not be empty"),
    "transformers-on-two-gpus": (["generate.generator=transformers", "generate.tensor_parallel_size=2"],
                                 "generate.tensor_parallel_size", "one device"),
    "duplicate-source-names": (["data.sources=[{format: builtin-safety}, {format: builtin-safety}]"],
                               "data.sources", "duplicate source names"),
    "unknown-loader-option": (["data.sources.0.options={pair_by: safer}"], "data.sources.builtin-safety.options.pair_by",
                              "unknown parameter"),
    "split-not-a-string": (["data.sources.0.options={split: 3}"], "data.sources.builtin-safety.options.split",
                           "expected a string"),
    "trained-scorer-without-scorer-split": (["data.scorer_fraction=0"], "scorers.reward.path", "scorer_fraction is 0"),
    "scorer-trained-on-unknown-source": (["scorers.reward.train_sources=[hh]"], "scorers.reward.train_sources",
                                         "not data sources"),
    "two-variants-train-the-same": (["variants=[{name: dpo, loss: dpo}, {name: dpo-again, loss: dpo}, "
                                     "{name: bdpo, loss: bdpo}]"],
                                    "variants.dpo-again", "trains what variant 'dpo' trains"),
    "no-seed-shared-with-baseline": (["variants.bdpo.seeds=[7]"], "variants", "share no seed with the baseline"),
}


@pytest.mark.parametrize("case", REFUSED_AT_LOAD, ids=list(REFUSED_AT_LOAD))
def test_validate_refuses_what_a_stage_would_refuse(case, tmp_path, capsys):
    from harness.cli import main

    overrides, key, fragment = REFUSED_AT_LOAD[case]
    config = write(tmp_path, VALIDATED)
    assert main(["validate", "--quiet", config]) == 0
    assert main(["validate", "--quiet", config, *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert f"config key '{key}'" in err and fragment in err, err
    assert list(tmp_path.iterdir()) == [tmp_path / "c.yaml"]  # nothing ran, nothing was written
