"""DePT: Shi & Lipani, "DePT: Decomposed Prompt Tuning for Parameter-Efficient Fine-tuning", ICLR 2024,
https://arxiv.org/abs/2309.05173 (official code: https://github.com/ZhengxiangShi/DePT).

What is trained: the parameter budget of a length-l prompt is split into a *shorter* prompt P (m x d)
and a low-rank pair A (s x r), B (r x d) whose scaled product gamma * A @ B is added position-wise to the
frozen embeddings of the first s input tokens (softprompt/layers/dept.py). With
m*d + r*(s + d) = l*d the parameter count matches vanilla prompt tuning while every sequence is l - m
tokens shorter, which is where DePT saves time and memory. P and {A, B} take two learning rates (the
prompt's high, e.g. 0.3; A/B's 1-3 orders lower) under one schedule. B starts at zero, so step 0 is
exactly prompt tuning with m tokens.

This file is a preset over the prompt parametrisation only: `offset_factory` and `offset_group` give any
objective a DePT prompt; `build` composes them with prompt tuning's text-to-text objective. Here m is
`prompt.num_virtual_tokens` and the prompt LR / weight decay are `optim.lr` / `optim.weight_decay`.

Also here: `budget_pairs` (the (m, r) pairs that fit a vanilla budget; `softprompt budget`) and
`load_official` (adapters saved by the official code, read without unpickling).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

import torch

from softprompt.errors import ConfigError, SoftPromptError
from softprompt.layers.dept import OVERFLOW, DeptOffset
from softprompt.methods.prompt_tuning import PromptTuning


@dataclass(frozen=True)
class DeptConfig:
    name: ClassVar[str] = "dept"
    rank: int = 30  # r; the released GLUE/SuperGLUE runs use 30 with m = 60 (76,800 params at s=256, d=768)
    max_length: int = 256  # s: rows of A, i.e. how many input tokens get an offset (the official max source length)
    alpha: float = 8.0  # gamma = alpha / sqrt(r) (official lora_alpha = 8); NOT LoRA's alpha / r
    offset_lr: float = 1e-4  # A and B's learning rate; the paper sweeps 1e-4 .. 5e-3 with prompt LR 0.3
    offset_weight_decay: float = 0.0  # the official optimizer applies none (its CLI weight decay is unused)
    # True: the official indexing, as if every row were padded to exactly s (right for seq2seq, left for
    # causal models, as in the official T5 and decoder-only paths). False: row i to the i-th real token.
    fixed_length: bool = False
    overflow: str = "error"  # rows over s tokens: error | truncate (tokens past s get no offset)

    def __post_init__(self):
        for key in ("rank", "max_length"):
            if getattr(self, key) < 1:
                raise ConfigError(f"method.{key}: must be >= 1, got {getattr(self, key)}"
                                  + (" (rank 0 is plain prompt tuning: use method prompt_tuning)" if key == "rank" else ""))
        if self.alpha <= 0:
            raise ConfigError(f"method.alpha: must be > 0, got {self.alpha}")
        if self.offset_lr < 0 or self.offset_weight_decay < 0:
            raise ConfigError("method.offset_lr and method.offset_weight_decay: must be >= 0")
        if self.overflow not in OVERFLOW:
            raise ConfigError(f"method.overflow: {self.overflow!r} is not valid; choose one of {list(OVERFLOW)}")


# ---------------------------------------------------------------------------------------------------
# The DePT prompt, usable by any objective


def offset_factory(dc: DeptConfig, cfg):
    """base -> DeptOffset sized to the base's embeddings (the `offset_factory` of `PromptTuning`)."""

    def make(base) -> DeptOffset:
        from softprompt.model import detect_kind

        kind = cfg.model.kind if cfg.model.kind != "auto" else detect_kind(base.config)
        seed = cfg.prompt.seed if cfg.prompt.seed is not None else cfg.train.seed
        return DeptOffset(dc.max_length, dc.rank, base.get_input_embeddings().weight.shape[1], alpha=dc.alpha,
                          fixed_length=dc.fixed_length, padding_side="left" if kind == "causal" else "right",
                          overflow=dc.overflow, generator=torch.Generator().manual_seed(seed))

    return make


def offset_group(model, dc: DeptConfig) -> dict:
    """A and B's optimizer group: their own LR and weight decay, the loop's shared schedule."""
    offset = model.prompt.offset
    return {"params": [offset.A, offset.B], "lr": dc.offset_lr, "weight_decay": dc.offset_weight_decay, "name": "offset"}


def check_lengths(dc: DeptConfig, cfg) -> None:
    """With overflow=error, every row the data pipeline makes must fit the offset (fail before loading)."""
    if dc.overflow == "error" and cfg.data.max_length > dc.max_length:
        raise ConfigError(
            f"method.max_length: DePT's offset covers s={dc.max_length} tokens but data.max_length="
            f"{cfg.data.max_length} allows longer rows; set data.max_length <= {dc.max_length} (inputs are cut "
            "per data.truncation, as the official code cuts to s), raise method.max_length, or set method.overflow=truncate"
        )


class DePT:
    """An objective (its model, loss and metrics) whose prompt is DePT-decomposed: adds A/B's group."""

    def __init__(self, objective, dc: DeptConfig):
        self.objective, self.dc = objective, dc

    def build_model(self, base, tokenizer, kind: str):
        return self.objective.build_model(base, tokenizer, kind)

    def param_groups(self, model) -> list[dict]:
        return self.objective.param_groups(model) + [offset_group(model, self.dc)]

    def loss(self, model, batch):
        return self.objective.loss(model, batch)

    def metric_names(self) -> list[str]:
        return self.objective.metric_names()

    def evaluate(self, model, items, batch_size):
        return self.objective.evaluate(model, items, batch_size)


def build(dc: DeptConfig, cfg) -> DePT:
    check_lengths(dc, cfg)
    return DePT(PromptTuning(cfg, offset_factory=offset_factory(dc, cfg)), dc)


# ---------------------------------------------------------------------------------------------------
# Parameter budget


def dept_parameters(m: int, r: int, s: int, d: int) -> int:
    """Trainable parameters of DePT: prompt m*d plus A (s*r) and B (r*d)."""
    return m * d + r * (s + d)


class BudgetPair(NamedTuple):
    m: int  # prompt tokens
    r: int  # the largest rank that fits
    params: int  # m*d + r*(s+d)
    exact: bool  # params == l*d


def budget_pairs(d: int, s: int, l: int, step: int = 1) -> list[BudgetPair]:  # noqa: E741 - the paper's l
    """For m = l, l-step, ..., >= 1: the largest r with m*d + r*(s+d) <= l*d (r = 0 at m = l is vanilla PT).
    E.g. d=768, s=256, l=100: (60, 30) and (40, 45) use the budget exactly."""
    if min(d, s, l, step) < 1:
        raise SoftPromptError(f"budget: d, s, l and step must be >= 1, got d={d}, s={s}, l={l}, step={step}")
    pairs = []
    for m in range(l, 0, -step):
        r = (l - m) * d // (s + d)
        params = dept_parameters(m, r, s, d)
        pairs.append(BudgetPair(m, r, params, params == l * d))
    return pairs


def format_budget(d: int, s: int, l: int, step: int = 10) -> str:  # noqa: E741
    lines = [f"vanilla budget: l={l} tokens x d={d} = {l * d:,} trainable parameters; DePT offset over s={s} tokens",
             f"{'m':>5} {'r':>5} {'prompt':>10} {'A+B':>10} {'total':>10} {'budget':>7} {'tokens saved':>13}"]
    for p in budget_pairs(d, s, l, step):
        note = "  vanilla prompt tuning" if p.r == 0 and p.m == l else ("  exact" if p.exact else "")
        lines.append(f"{p.m:>5} {p.r:>5} {p.m * d:>10,} {p.r * (s + d):>10,} {p.params:>10,} "
                     f"{p.params / (l * d):>7.1%} {l - p.m:>13}{note}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Adapters saved by the official code (a PEFT fork: peft_type PROMPT_TUNING_LORA)

OFFICIAL_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def is_official(path: str | Path) -> bool:
    """Whether `path` holds an adapter saved by the official code. An unreadable config is not one: the
    plain-adapter reader then reports what is wrong with it."""
    cfg = Path(path) / "adapter_config.json"
    try:
        data = json.loads(cfg.read_bytes().decode("utf-8")) if cfg.is_file() else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("peft_type") == "PROMPT_TUNING_LORA"


def read_official(path: str | Path) -> dict:
    """Config and tensors of an official DePT adapter dir: prompt (m, d), A (s, r), B (r, d), scaling.

    The official save keeps `prompt_embeddings` and the state-dict entries ending in `lora_embedding_A`/`_B`
    (saved as `prompt_encoder.lora_embedding_A` once the adapter name is stripped); the forward adds
    `lora_alpha / sqrt(r) * A @ B` to the (B, s, d) input embeddings, so A is (max_length, r), B (r, d).
    """
    path = Path(path)
    cfg = json.loads((path / "adapter_config.json").read_text())
    files = [path / f for f in OFFICIAL_FILES if (path / f).is_file()]
    if not files:
        raise SoftPromptError(f"DePT import: {str(path)!r} has no {' or '.join(OFFICIAL_FILES)}")
    if files[0].suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(files[0]))
    else:
        try:  # weights_only: plain tensors in, no code ever unpickled
            state = torch.load(files[0], map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise SoftPromptError(f"DePT import: {str(files[0])!r} is not a plain tensor file "
                                  f"({type(e).__name__}); only weights are read, never pickled code") from None
    tensors = {}
    for want in ("prompt_embeddings", "lora_embedding_A", "lora_embedding_B"):
        found = [k for k in state if k == want or k.endswith("." + want)]
        if len(found) != 1:
            raise SoftPromptError(f"DePT import: expected one {want!r} tensor in {files[0].name}, found "
                                  f"{found or 'none'} among {sorted(state)}")
        tensors[want] = state[found[0]].detach().float()
    prompt, A, B = tensors["prompt_embeddings"], tensors["lora_embedding_A"], tensors["lora_embedding_B"]
    m, d = cfg.get("num_virtual_tokens", prompt.shape[0]), cfg.get("token_dim", prompt.shape[-1])
    r, s = cfg.get("r", A.shape[-1]), cfg.get("max_length", A.shape[0])
    n_sub = cfg.get("num_transformer_submodules") or 1
    expected = {"prompt_embeddings": (m * n_sub, d), "lora_embedding_A": (s, r), "lora_embedding_B": (r, d)}
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise SoftPromptError(
                f"DePT import: {key} has shape {tuple(tensors[key].shape)}, expected {shape} from adapter_config.json "
                f"(num_virtual_tokens={m}, token_dim={d}, r={r}, max_length={s}); A is (max_length, r), B (r, token_dim)"
            )
    if n_sub != 1:
        raise SoftPromptError(f"DePT import: num_transformer_submodules={n_sub}; only encoder-side prompts (1) are "
                              "supported, as in every official DePT run")
    if r < 1:
        raise SoftPromptError("DePT import: r=0 has no offset; import it as a plain prompt-tuning adapter")
    return {"prompt": prompt, "A": A, "B": B, "rank": r, "length": s, "alpha": float(cfg.get("lora_alpha", 8)),
            "task_type": cfg.get("task_type"), "base_model": cfg.get("base_model_name_or_path")}


def load_official(path: str | Path, base=None, tokenizer=None, overflow: str = "error"):
    """A SoftPromptModel reproducing an official DePT adapter: fixed-length indexing on the official
    padding side (left for CAUSAL_LM, right otherwise). `save_adapter` then writes it in our format."""
    from softprompt.layers import PromptEmbedding
    from softprompt.model import SoftPromptModel, detect_kind, load_base

    spec = read_official(path)
    kind = {"CAUSAL_LM": "causal", "SEQ_2_SEQ_LM": "seq2seq"}.get(spec["task_type"], "auto")
    if base is None:
        if not spec["base_model"]:
            raise SoftPromptError(f"DePT import: {str(path)!r} names no base model; pass base=... explicitly")
        base, loaded, kind = load_base(spec["base_model"], kind=kind)
        tokenizer = tokenizer or loaded
    kind = kind if kind != "auto" else detect_kind(base.config)
    dim = base.get_input_embeddings().weight.shape[1]
    if spec["prompt"].shape[1] != dim:
        raise SoftPromptError(f"DePT import: the adapter's token_dim is {spec['prompt'].shape[1]} but the base's hidden "
                              f"size is {dim}; load it with its own base ({spec['base_model']!r})")
    offset = DeptOffset(spec["length"], spec["rank"], dim, alpha=spec["alpha"], fixed_length=True,
                        padding_side="left" if kind == "causal" else "right", overflow=overflow,
                        generator=torch.Generator().manual_seed(0))
    offset.load_state_dict({"A": spec["A"], "B": spec["B"]})
    model = SoftPromptModel(base, PromptEmbedding(spec["prompt"], offset=offset), tokenizer, kind,
                            spec["base_model"] or getattr(base.config, "_name_or_path", None))
    return model.to(base.device)


__all__ = ["BudgetPair", "DePT", "DeptConfig", "budget_pairs", "build", "dept_parameters", "load_official",
           "offset_factory", "offset_group", "read_official"]
