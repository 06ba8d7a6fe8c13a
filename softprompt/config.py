"""Frozen dataclass configs, a strict YAML loader and dotted overrides.

A recipe mirrors `Config` key for key. Unknown keys are errors that list the valid ones; values are
checked against the field types. The defaults are the embedded demo (`model.name_or_path: demo`), so
`softprompt train` with no recipe runs it.

    cfg = load_config("recipes/debug/tiny-causal.yaml", overrides=["train.max_steps=20"])
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from softprompt.data.templates import check_label_names, template_fields
from softprompt.errors import ConfigError
from softprompt.layers.plain import LABEL_INITS, PromptConfig
from softprompt.loading import QUANTIZATIONS, ModelConfig
from softprompt.objectives.lm import LMConfig
from softprompt.registry import HEADS, METHODS, OBJECTIVES, PROMPTS, SELECTORS, lookup
from softprompt.textfile import read_utf8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataConfig:
    path: str = "demo"  # hub dataset name, local file/dir (json, jsonl, csv, parquet), or "demo"
    name: str | None = None  # hub dataset config name
    train_split: str = "train"  # one data file is the train split, whatever this names it
    eval_split: str | None = "validation"
    # A test split the data lacks is an error, except this default: one file, or a directory of train and
    # validation files, then runs without a test split (with a warning).
    test_split: str | None = "test"
    # Carve the eval split from the train rows instead (0 < f < 1; litgpt's val_split_fraction): a shuffle
    # seeded by split_seed (not train.seed, so seed sweeps score the same rows) moves round(f * n) rows out
    # of train. data.eval_split is then not looked up: leave it at its default or null.
    validation_fraction: float | None = None
    split_seed: int = 0
    source_template: str = "{source}"  # str.format over the row's columns
    target_template: str = "{target}"
    # Class-index columns to words for text-to-text: with label_names set, templates can use
    # {label_name} = label_names[row[label_column]] (e.g. GLUE's 0/1 -> negative/positive).
    label_column: str = "label"
    label_names: tuple[str, ...] = ()
    max_length: int = 256  # source + target tokens (causal) / source tokens (seq2seq, encoder)
    max_target_length: int = 32
    # source_left: drop the source's oldest tokens; source_right: drop its last tokens;
    # error: refuse rows that do not fit. Targets are never truncated: too long is an error.
    truncation: str = "source_left"
    add_eos: bool = True  # append the tokenizer's eos to the target
    group_by_length: bool = False
    max_train_samples: int | None = None
    max_eval_samples: int | None = None


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"  # adamw | adafactor
    lr: float = 3e-2
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scheduler: str = "constant"  # constant | linear | cosine (all with warmup)
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = "checkpoints"
    run_name: str = "demo"
    seed: int = 0
    max_steps: int = 200
    batch_size: int = 16  # per process, per micro-step
    eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"  # no | fp16 | bf16
    gradient_checkpointing: bool = False
    log_every: int = 10
    eval_every: int = 50
    save_every: int = 100
    keep_checkpoints: int = 2
    # the eval metric that picks final/'s adapter (eval_loss, eval_accuracy, eval_macro_f1, ...); None: the
    # objective's default (lm: eval_loss; classify: eval_macro_f1, PTEC's selection metric)
    metric: str | None = None
    greater_is_better: bool | None = None  # None: the objective's rule (losses and perplexity: lower is better)
    keep_best: bool = True  # final/ holds the best adapter by `metric`, else the last
    early_stopping_patience: int | None = None  # evals without improvement before stopping
    # A step whose loss or gradient is not finite (NaN/inf) is skipped: no optimizer or schedule step, counted
    # in the logs as `nonfinite_steps`; after this many in all, the run stops with an error (0: at the first).
    # Under fp16 the loss scaler skips overflowing steps itself (`loss_scale` in the logs); those do not count.
    max_nonfinite_steps: int = 10
    # Under FSDP (recipes/accelerate/fsdp.yaml), where the trainable components (prompt, DePT offset, head) live:
    # "replicate" (whole on every process, gradients averaged as DDP does; a prompt is small) or "shard" (split
    # over the processes with the base, gathered for each forward and for saving).
    fsdp_prompt: str = "replicate"
    # Extra loggers through accelerate (wandb: offline without an API key; tensorboard); none unless asked for.
    # metrics.jsonl and curves.png are always written in the run dir.
    trackers: tuple[str, ...] = ()
    progress_bar: bool = True


@dataclass(frozen=True)
class MethodConfig:
    # A preset (registry.METHODS) that fills prompt.type, objective.type and the head; None: the sections
    # say it all (a combination no preset names, e.g. a bank prompt with the lm objective).
    name: str | None = "prompt_tuning"


@dataclass(frozen=True)
class Config:
    method: MethodConfig = field(default_factory=MethodConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # Polymorphic sections: `type` picks the registered component, whose config class takes the other keys.
    prompt: Any = field(default_factory=PromptConfig)  # how the prompt is produced (registry.PROMPTS)
    objective: Any = field(default_factory=LMConfig)  # what it is trained for (registry.OBJECTIVES)
    head: Any = None  # a trainable head on the body's hidden states (registry.HEADS), or None
    selector: Any = None  # each row's prompt of a bank (registry.SELECTORS), or None
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# Built in this order: the prompt's label inits read the objective's labels, and its preset the others.
SECTIONS = {"objective": (OBJECTIVES, "lm"), "head": (HEADS, None), "selector": (SELECTORS, None),
            "prompt": (PROMPTS, "plain")}

# Keys that moved when prompt sources and objectives became components: old key -> new key. A recipe
# written before keeps working (one warning names the new key); giving both is an error.
MOVED = {
    "train.generate_eval": "objective.generate_eval",
    "train.max_new_tokens": "objective.max_new_tokens",
    **{f"method.{k}": f"prompt.{k}" for k in ("rank", "max_length", "alpha", "offset_lr", "offset_weight_decay",
                                               "fixed_length", "overflow")},
}


def from_dict(data: dict | None, warn_moved: bool = True) -> Config:
    """A Config from a recipe dict (never changed: moved keys are rewritten in a copy). `warn_moved`: log
    the keys that moved (off where an old run's recorded config is read back, e.g. on resume)."""
    data = _move_legacy_keys(copy.deepcopy(dict(data or {})), warn_moved)
    name = _method_name(data.pop("method", None))
    preset = lookup(METHODS, name, "method.name") if name is not None else None
    sections = {}
    for section, (table, default) in SECTIONS.items():
        values = data.pop(section, None)
        if isinstance(values, OverrideText):
            values = values.parsed()
        wanted = getattr(preset, section, None) if preset is not None else None
        if values is None and (wanted or default) is None:
            sections[section] = None  # no head
            continue
        values = dict(_mapping(values if values is not None else {}, section))
        if preset is not None and wanted is None and default is None:  # e.g. a head under a preset that has none
            raise ConfigError(f"{section}: method {name!r} has no {section}; drop the {section} section, or drop "
                              "the method and set the sections' types yourself")
        given = values.pop("type", None)
        if preset is not None and given is not None and given != wanted:
            raise ConfigError(f"{section}.type: {given!r} conflicts with method {name!r}, which uses "
                              f"{section}.type {wanted!r}; drop one of them (a method is a preset over the sections)")
        # a section given without a type takes its preset's, else the default, else the first registered
        kind = given or wanted or default or next(iter(table))
        if section == "prompt":  # the preset named, else the one the sections amount to (its init applies too)
            values = _prompt_defaults(values, preset or METHODS.get(_preset_of(str(kind), sections) or ""),
                                      sections["objective"])
        elif section == "head" and values.get("num_outputs") is None and getattr(sections["objective"], "labels", None):
            values = {**values, "num_outputs": len(sections["objective"].labels)}  # one output per label
        entry = lookup(table, str(kind), f"{section}.type")
        sections[section] = _build(entry.config_class, {**values, "type": str(kind)}, section)
    cfg = _build(Config, data, "")
    if name is None:  # the preset these sections amount to, if any
        name = _preset_of(sections["prompt"].type, sections)
    cfg = dataclasses.replace(cfg, method=MethodConfig(name), **sections)
    validate(cfg)
    return cfg


def _preset_of(prompt_type: str, sections: dict) -> str | None:
    """The name of the preset over this prompt type and the built objective and head sections, if any."""
    head, selector = (sections[s].type if sections[s] is not None else None for s in ("head", "selector"))
    return next((n for n, p in METHODS.items() if (p.prompt, p.objective, p.head, p.selector) ==
                 (prompt_type, sections["objective"].type, head, selector)), None)


def _prompt_defaults(values: dict, preset, objective) -> dict:
    """The method's default init where the recipe sets none, and label inits' names from the objective's
    labels where the recipe gives none (one list of label names in a recipe, not two)."""
    if "init" not in values and preset is not None and preset.prompt_init is not None:
        values = {**values, "init": preset.prompt_init}
    if values.get("init") in LABEL_INITS and not values.get("init_labels") and getattr(objective, "labels", None):
        values = {**values, "init_labels": tuple(objective.labels)}
    return values


def _mapping(values: Any, where: str) -> dict:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    return values


def _method_name(method: Any) -> str | None:
    """The preset's name from `method: NAME` or `method: {name: NAME}`; None when absent or null (the
    sections alone decide, and the name is the preset they amount to, if any)."""
    if isinstance(method, OverrideText):
        method = method.parsed()
    if method is None:
        return None
    if isinstance(method, str):
        return method
    if not isinstance(method, dict) or "name" not in method:
        raise ConfigError("method: expected a preset name or a mapping with a 'name' key, e.g. `method: {name: prompt_tuning}`")
    extra = sorted(set(method) - {"name"})
    if extra:
        raise ConfigError(f"method: unknown key(s) {extra}; a method is a preset name (choose one of {sorted(METHODS)}); "
                          "its settings live in the prompt, objective and head sections")
    value = method["name"]
    value = value.parsed() if isinstance(value, OverrideText) else value
    return None if value is None else str(value)


def _move_legacy_keys(data: dict, warn: bool = True) -> dict:
    """Apply MOVED to a raw recipe dict (after overrides), warning once per key."""
    for old, new in MOVED.items():
        old_section, old_key = old.split(".")
        section = data.get(old_section)
        if not isinstance(section, dict) or old_key not in section:
            continue
        new_section, new_key = new.split(".")
        target = data.setdefault(new_section, {})
        if not isinstance(target, dict):
            continue  # the section's own type check reports it
        if new_key in target:
            raise ConfigError(f"{old}: moved to {new}, which is also set; keep {new} only")
        data[old_section] = {k: v for k, v in section.items() if k != old_key}
        target[new_key] = section[old_key]
        if warn:
            log.warning("config: %s is now %s; the recipe still works, but update it", old, new)
    return data


def to_dict(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg):
        out = {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
        if hasattr(cfg, "name") and "name" not in out:
            out = {"name": cfg.name, **out}
        return out
    if isinstance(cfg, tuple):
        return [to_dict(v) for v in cfg]
    return cfg


def flat(d: dict, prefix: str = "") -> dict:
    """A nested mapping as dotted keys (`prompt.offset.alpha`), values that are not plain scalars as text: what
    trackers take, and what comparisons of configs and component descriptions name."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def config_with(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A Config from a config dict (a run's recorded one) with `key.sub=value` overrides on top."""
    data = copy.deepcopy(data)
    for item in overrides:
        _apply_override(data, item)
    return from_dict(data)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML recipe (or the defaults when `path` is None) and apply `key.sub=value` overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"recipe {str(p)!r} is a directory; pass the path of a YAML file (see recipes/)")
        if not p.is_file():
            raise ConfigError(f"recipe not found: {str(p)!r}; pass the path of a YAML file (see recipes/)")
        text = read_utf8(p, "recipe")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if data is None:
            raise ConfigError(f"recipe {str(p)!r} is empty; give at least one section (model, data, train, ...) "
                              "or leave the recipe out to run the defaults")
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: a recipe must be a mapping of sections (model, prompt, data, ...)")
    for item in overrides:
        _apply_override(data, item)
    return from_dict(data)


def _apply_override(data: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key.sub=value, e.g. train.max_steps=20")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {item!r}: no key before '='; expected key.sub=value, e.g. train.max_steps=20")
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
    node[parts[-1]] = OverrideText(raw)


class OverrideText(str):
    """A command-line value: taken verbatim for string fields (so `{question}` stays a template),
    parsed as YAML for every other type."""

    def parsed(self) -> Any:
        try:
            return yaml.safe_load(self)
        except yaml.YAMLError:
            return str(self)


def _build(cls: type, values: Any, where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'recipe'}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where or 'recipe'}: unknown key(s) {unknown}; valid keys are {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}" if where else name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if isinstance(value, OverrideText):
        union = typing.get_origin(tp) in (typing.Union, types.UnionType)
        optional = union and type(None) in typing.get_args(tp)
        if (tp is str or (union and str in typing.get_args(tp))) and not (optional and value.strip() in ("null", "~", "")):
            return str(value)
        value = value.parsed()
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value or {}, where)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, where) for a, v in zip(args, value))
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads 1e-4 as a string
        except ValueError:
            pass
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


CHOICES = {
    "model.kind": ("auto", "causal", "seq2seq", "encoder"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.quantization": QUANTIZATIONS,
    "data.truncation": ("source_left", "source_right", "error"),
    "optim.name": ("adamw", "adafactor"),
    "optim.scheduler": ("constant", "linear", "cosine"),
    "train.mixed_precision": ("no", "fp16", "bf16"),
    "train.fsdp_prompt": ("replicate", "shard"),
}

# Keys whose value (when not null) must be > 0, or >= 0; floats must also be finite (no .nan/.inf).
POSITIVE = (
    "data.max_length", "data.max_target_length", "train.max_steps",
    "train.batch_size", "train.eval_batch_size", "train.gradient_accumulation_steps",
    "train.log_every", "train.eval_every", "train.save_every",
    "optim.eps", "optim.max_grad_norm", "train.keep_checkpoints",
    "data.max_train_samples", "data.max_eval_samples", "train.early_stopping_patience",
)
NON_NEGATIVE = ("optim.lr", "optim.weight_decay", "optim.warmup_steps", "train.max_nonfinite_steps")
HINTS = {
    "optim.max_grad_norm": "; set it to null to turn clipping off",
    "data.max_train_samples": "; set it to null to use every row",
    "data.max_eval_samples": "; set it to null to use every row",
    "train.early_stopping_patience": "; set it to null to turn early stopping off",
}


def validate(cfg: Config) -> None:
    """Value checks the types cannot express; each names the key and the valid values."""
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not valid; choose one of {list(allowed)}")
    _check_finite(cfg, "")
    for keys, low, word in ((POSITIVE, 0, ">"), (NON_NEGATIVE, None, ">=")):
        for key in keys:
            value = _get(cfg, key)
            if value is not None and (value <= 0 if low == 0 else value < 0):
                raise ConfigError(f"{key}: must be {word} 0, got {value}{HINTS.get(key, '')}")
    for i, beta in enumerate(cfg.optim.betas):
        if not 0 <= beta < 1:
            raise ConfigError(f"optim.betas: each beta must be in [0, 1), got {list(cfg.optim.betas)} "
                              f"(beta{i + 1} = {beta}); the usual values are [0.9, 0.999]")
    if cfg.optim.warmup_steps > cfg.train.max_steps:
        raise ConfigError(f"optim.warmup_steps: {cfg.optim.warmup_steps} is longer than train.max_steps="
                          f"{cfg.train.max_steps}, so the learning rate would never reach optim.lr; lower it")
    for key in ("data.source_template", "data.target_template"):
        template_fields(_get(cfg, key), key)
    _check_data(cfg.data)
    if cfg.prompt.init in LABEL_INITS and not cfg.prompt.init_labels and not hasattr(cfg.objective, "labels"):
        # an objective with labels gives them (from the data at the latest); this one has none
        raise ConfigError(f"prompt.init_labels: required when prompt.init is {cfg.prompt.init!r} and the objective has "
                          "no labels; give the label names, e.g. prompt.init_labels: [sports, politics]")
    for section, table in (("prompt", PROMPTS), ("objective", OBJECTIVES), ("selector", SELECTORS)):  # across sections
        if getattr(cfg, section) is None:
            continue
        check = table[getattr(cfg, section).type].check
        if check is not None:
            check(getattr(cfg, section), cfg)
    if cfg.data.max_target_length >= cfg.data.max_length:
        raise ConfigError("data.max_target_length: must be smaller than data.max_length")
    for tracker in cfg.train.trackers:
        if tracker not in ("wandb", "tensorboard"):
            raise ConfigError(f"train.trackers: {tracker!r} is not valid; use any of ['wandb', 'tensorboard']")


def _check_data(data: DataConfig) -> None:
    check_label_names(data.source_template, data.target_template, data.label_names)
    fraction = data.validation_fraction
    if fraction is not None and not 0 < fraction < 1:
        raise ConfigError(f"data.validation_fraction: must be between 0 and 1 (exclusive), got {fraction}; e.g. 0.1 "
                          "carves 10% of the train rows into the eval split, null carves none")
    default_eval = DataConfig.__dataclass_fields__["eval_split"].default
    if fraction is not None and data.eval_split not in (None, default_eval):
        raise ConfigError(f"data.validation_fraction: set ({fraction}) while data.eval_split names a split "
                          f"({data.eval_split!r}); both choose the eval rows, so keep one: set data.eval_split to "
                          "null to carve them from the train rows, or data.validation_fraction to null")


def _check_finite(node: Any, where: str) -> None:
    """Every float in the config (sections and the method preset) is finite: YAML reads .nan and .inf."""
    for f in dataclasses.fields(node):
        value, key = getattr(node, f.name), f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            _check_finite(value, key)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{key}: must be a finite number, got {value!r}")


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg
