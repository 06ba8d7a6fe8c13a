"""Frozen dataclass configs, a strict YAML loader and dotted overrides.

A recipe mirrors `Config` key for key. Unknown keys are errors that list the valid ones; values are
checked against the field types. The defaults are the embedded demo (`model.name_or_path: demo`), so
`softprompt train` with no recipe runs it.

    cfg = load_config("recipes/debug/tiny-causal.yaml", overrides=["train.max_steps=20"])
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from softprompt.errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = "demo"  # hub id, local dir, or "demo" for the embedded default model
    kind: str = "auto"  # auto | causal | seq2seq | encoder
    dtype: str = "float32"  # dtype the frozen base is loaded in: float32 | bfloat16 | float16
    revision: str | None = None
    trust_remote_code: bool = False


@dataclass(frozen=True)
class PromptConfig:
    num_virtual_tokens: int = 20
    # vocab: rows of frequent non-special tokens (Lester et al. §3.2 use the 5,000 most common ids)
    # uniform: U(-init_range, init_range); text: init_text's tokens tiled to p;
    # class_label: mean sub-token embedding of each of init_labels, rest as vocab; file: init_file
    init: str = "vocab"
    init_range: float = 0.5
    init_text: str | None = None
    init_labels: tuple[str, ...] = ()
    init_file: str | None = None  # a .safetensors/.pt tensor (p, d) or an adapter dir
    vocab_top_k: int = 5000
    seed: int | None = None  # init seed; None uses train.seed
    kernel: str = "auto"  # auto | torch | triton (the fused kernel, where available)
    # Decoder-only models: run the prompt once per step and share its keys/values across the batch
    # (softprompt/shared_prefix.py); auto falls back to concatenation where that is not exact.
    execution: str = "auto"  # auto | shared_prefix | concat


@dataclass(frozen=True)
class DataConfig:
    path: str = "demo"  # hub dataset name, local file/dir (json, jsonl, csv, parquet), or "demo"
    name: str | None = None  # hub dataset config name
    train_split: str = "train"
    eval_split: str | None = "validation"
    test_split: str | None = "test"
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
    metric: str = "eval_loss"  # any logged eval metric: eval_loss, eval_accuracy, ...
    greater_is_better: bool | None = None  # None: from the metric's name (loss/ppl/perplexity: lower is better)
    keep_best: bool = True  # final/ holds the best adapter by `metric`, else the last
    early_stopping_patience: int | None = None  # evals without improvement before stopping
    generate_eval: bool = True  # exact-match accuracy by greedy generation at each eval
    max_new_tokens: int = 16
    trackers: tuple[str, ...] = ("wandb", "tensorboard")  # accelerate trackers; [] for none
    progress_bar: bool = True


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # The method preset: `name` picks a registered method; its other keys are that method's config.
    method: Any = None


def method_config(name: str, values: dict | None = None, where: str = "method") -> Any:
    from softprompt.methods import METHODS

    if name not in METHODS:
        raise ConfigError(f"{where}.name: unknown method {name!r}; choose one of {sorted(METHODS)}")
    return _build(METHODS[name].config_class, values or {}, where)


def from_dict(data: dict | None) -> Config:
    data = dict(data or {})
    method = data.pop("method", None)
    cfg = _build(Config, data, "")
    if method is None:
        method = {"name": "prompt_tuning"}
    if not isinstance(method, dict) or "name" not in method:
        raise ConfigError("method: expected a mapping with a 'name' key, e.g. `method: {name: prompt_tuning}`")
    values = {k: v for k, v in method.items() if k != "name"}
    cfg = dataclasses.replace(cfg, method=method_config(method["name"], values))
    validate(cfg)
    return cfg


def to_dict(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg):
        out = {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
        if hasattr(cfg, "name") and "name" not in out:
            out = {"name": cfg.name, **out}
        return out
    if isinstance(cfg, tuple):
        return [to_dict(v) for v in cfg]
    return cfg


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


def read_utf8(path: Path, what: str) -> str:
    """A text file's contents; a file that is not UTF-8 (UTF-16, latin-1, ...) is a ConfigError naming it."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")  # a UTF-8 byte-order mark is harmless
    except UnicodeDecodeError as e:
        bom = " (it starts with a UTF-16 byte-order mark)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ConfigError(f"{what} {str(path)!r} is not UTF-8 text{bom}: byte {raw[e.start]:#04x} at offset {e.start}; "
                          "save it as UTF-8") from None


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
    "prompt.init": ("vocab", "uniform", "text", "class_label", "file"),
    "prompt.kernel": ("auto", "torch", "triton"),
    "prompt.execution": ("auto", "shared_prefix", "concat"),
    "data.truncation": ("source_left", "source_right", "error"),
    "optim.name": ("adamw", "adafactor"),
    "optim.scheduler": ("constant", "linear", "cosine"),
    "train.mixed_precision": ("no", "fp16", "bf16"),
}

# Keys whose value (when not null) must be > 0, or >= 0; floats must also be finite (no .nan/.inf).
POSITIVE = (
    "prompt.num_virtual_tokens", "data.max_length", "data.max_target_length", "train.max_steps",
    "train.batch_size", "train.eval_batch_size", "train.gradient_accumulation_steps",
    "train.log_every", "train.eval_every", "train.save_every", "train.max_new_tokens",
    "prompt.init_range", "prompt.vocab_top_k", "optim.eps", "optim.max_grad_norm", "train.keep_checkpoints",
    "data.max_train_samples", "data.max_eval_samples", "train.early_stopping_patience",
)
NON_NEGATIVE = ("optim.lr", "optim.weight_decay", "optim.warmup_steps")
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
    if cfg.prompt.init == "text" and not cfg.prompt.init_text:
        raise ConfigError("prompt.init_text: required when prompt.init is 'text'")
    if cfg.prompt.init == "class_label" and not cfg.prompt.init_labels:
        raise ConfigError("prompt.init_labels: required when prompt.init is 'class_label'")
    if cfg.prompt.init == "file" and not cfg.prompt.init_file:
        raise ConfigError("prompt.init_file: required when prompt.init is 'file'")
    if cfg.data.max_target_length >= cfg.data.max_length:
        raise ConfigError("data.max_target_length: must be smaller than data.max_length")
    for tracker in cfg.train.trackers:
        if tracker not in ("wandb", "tensorboard"):
            raise ConfigError(f"train.trackers: {tracker!r} is not valid; use any of ['wandb', 'tensorboard']")


def _check_finite(node: Any, where: str) -> None:
    """Every float in the config (sections and the method preset) is finite: YAML reads .nan and .inf."""
    for f in dataclasses.fields(node):
        value, key = getattr(node, f.name), f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            _check_finite(value, key)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{key}: must be a finite number, got {value!r}")


TEMPLATE_HELP = ("fields are plain column names like {source}; write literal braces as {{ and }} "
                 "(e.g. JSON: '{{\"answer\": \"{target}\"}}')")


def template_fields(template: str, key: str) -> list[str]:
    """The column names a str.format template uses. Refuses what would fail or silently render something
    else at data time: positional fields ({} {0}), unbalanced braces, attribute/index access
    ({source.upper} {source[0]}), conversions ({source!r}) and format specs ({score:>5})."""
    import string

    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ConfigError(f"{key}: {template!r} has unbalanced braces ({e}); {TEMPLATE_HELP}") from None
    fields = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if not name.isidentifier():
            what = ("a positional field" if name == "" or name.isdigit() else
                    "attribute/index access, which templates do not support" if name.split(".")[0].split("[")[0]
                    .isidentifier() else "not a column name")
            raise ConfigError(f"{key}: {shown} in {template!r} is {what}; {TEMPLATE_HELP}")
        if conversion or spec:
            raise ConfigError(f"{key}: {shown} in {template!r} converts or formats the value; templates take "
                              f"the column as it is ({{{name}}}): format the column in the data instead, "
                              "and write literal braces as {{ and }}")
        fields.append(name)
    return fields


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg
