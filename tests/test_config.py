"""The strict config loader, overrides, and every recipe in recipes/."""

from pathlib import Path

import pytest

from softprompt.config import Config, from_dict, load_config, to_dict
from softprompt.errors import ConfigError

RECIPES = sorted(p for p in (Path(__file__).parent.parent / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)


def test_defaults_are_the_demo():
    cfg = load_config()
    assert cfg.model.name_or_path == "demo" and cfg.data.path == "demo" and cfg.method.name == "prompt_tuning"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_every_recipe_loads(recipe):
    cfg = load_config(recipe)
    assert isinstance(cfg, Config)
    assert from_dict(to_dict(cfg)) == cfg  # the YAML mirrors the dataclasses key for key


def test_there_are_recipes():
    assert len(RECIPES) >= 3


def test_overrides_and_types(tmp_path):
    cfg = load_config(None, ["train.max_steps=7", "optim.lr=1e-4", "prompt.init_labels=[a, b]", "optim.betas=[0.8, 0.9]"])
    assert cfg.train.max_steps == 7 and cfg.optim.lr == 1e-4
    assert cfg.prompt.init_labels == ("a", "b") and cfg.optim.betas == (0.8, 0.9)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.max_step=3"], r"train: unknown key\(s\) \['max_step'\]; valid keys are \[.*'max_steps'"),
        (["bogus.x=1"], r"recipe: unknown key\(s\) \['bogus'\]"),
        (["train.max_steps=many"], r"train.max_steps: expected int, got 'many'"),
        (["train.max_steps=0"], r"train.max_steps: must be > 0"),
        (["optim.name=sgd"], r"optim.name: 'sgd' is not valid; choose one of \['adamw', 'adafactor'\]"),
        (["method.name=nope"], r"method.name: unknown method 'nope'"),
        (["prompt.init=text"], r"prompt.init_text: required"),
        (["train.trackers=[mlflow]"], r"train.trackers: 'mlflow' is not valid"),
        (["train.max_steps"], r"expected key.sub=value"),
    ],
)
def test_bad_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_bad_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="recipe not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)


ACCELERATE = sorted((Path(__file__).parent.parent / "recipes" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("launch_cfg", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_launch_configs_parse(launch_cfg):
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(launch_cfg))  # accelerate's own reader for `--config_file`
    assert cfg.num_processes >= 2 and str(cfg.distributed_type).split(".")[-1] in {"MULTI_GPU", "FSDP", "DEEPSPEED"}


def test_no_tracker_unless_asked_for(tmp_path):
    """The default run writes no wandb/ or tensorboard files: only the trackers a user names."""
    assert load_config().train.trackers == ()
    assert load_config(None, ["train.trackers=[wandb]"]).train.trackers == ("wandb",)
