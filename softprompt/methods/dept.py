"""DePT: Shi & Lipani, "DePT: Decomposed Prompt Tuning for Parameter-Efficient Fine-tuning", ICLR 2024,
https://arxiv.org/abs/2309.05173 (official code: https://github.com/ZhengxiangShi/DePT).

What is trained: the parameter budget of a length-l prompt is split into a *shorter* prompt P (m x d)
and a low-rank pair A (s x r), B (r x d) whose scaled product gamma * A @ B is added position-wise to the
frozen embeddings of the first s input tokens (softprompt/layers/dept.py). With
m*d + r*(s + d) = l*d the parameter count matches vanilla prompt tuning while every sequence is l - m
tokens shorter, which is where DePT saves time and memory. P and {A, B} take two learning rates (the
prompt's high, e.g. 0.3; A/B's 1-3 orders lower) under one schedule. B starts at zero, so step 0 is
exactly prompt tuning with m tokens.

The preset: the DePT prompt source (layers/dept.py: `prompt.type: dept`, with m = `prompt.num_virtual_tokens`,
its rank, length s and the offset's own LR) with the text-to-text objective. Any other objective takes a
DePT prompt by setting `prompt.type: dept`.

Also here: `budget_pairs` (the (m, r) pairs that fit a vanilla budget; `softprompt budget`) and
`read_official` / `official_source` (adapters saved by the official code, read without unpickling).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch

from softprompt.errors import SoftPromptError
from softprompt.layers.dept import DeptOffset
from softprompt.layers.prompt_embedding import PromptEmbedding
from softprompt.methods import Preset

PRESET = Preset(prompt="dept", objective="lm")


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


def official_source(spec: dict, kind: str, overflow: str = "error") -> PromptEmbedding:
    """The prompt source reproducing an official DePT adapter (`read_official`'s spec) on a `kind` base:
    fixed-length indexing on the official padding side (left for causal models, right otherwise)."""
    offset = DeptOffset(spec["length"], spec["rank"], spec["prompt"].shape[1], alpha=spec["alpha"], fixed_length=True,
                        padding_side="left" if kind == "causal" else "right", overflow=overflow,
                        generator=torch.Generator().manual_seed(0))
    offset.load_state_dict({"A": spec["A"], "B": spec["B"]})
    return PromptEmbedding(spec["prompt"], offset=offset)


OFFICIAL_KINDS = {"CAUSAL_LM": "causal", "SEQ_2_SEQ_LM": "seq2seq"}


__all__ = ["OFFICIAL_KINDS", "PRESET", "BudgetPair", "budget_pairs", "dept_parameters", "format_budget", "is_official",
           "official_source", "read_official"]
