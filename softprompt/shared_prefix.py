"""Shared-prefix execution for decoder-only models (DESIGN.md §4, research/peft_anchor.md §1.8).

Under a causal mask the prompt attends only to itself, so its keys and values are the same in every
row of a batch. The concatenation path still runs `[prompt; tokens]` for all B rows; this path runs
the prompt once with batch 1, hands its per-layer keys/values to the batch as a cache broadcast over
rows (`expand`: no copy), and runs only the real tokens with positions shifted by p. Gradients flow
back through the cache into the prompt. Work per step drops from B·(p+L) to p + B·L token passes;
the LM head sees only the L real positions (as on the concatenation path, via `logits_to_keep`).

Layout (one row, p = 3, left-padded input `_ a b`):

    concatenation:  inputs [P0 P1 P2 _ a b]   mask [1 1 1 0 1 1]   positions [0 1 2 2 3 4]
    shared prefix:  cache  [P0 P1 P2]  +  inputs [_ a b]  mask [1 1 1 | 0 1 1]  positions [2 3 4]

Key column j holds the same token on both paths and the positions agree column for column
(`p + cumsum(mask) - 1`), so HF builds the same attention mask (sliding windows included) and every
real position computes the same thing. Outputs come out aligned with the input (B, L, ...) without
slicing. The prediction made at the prompt's last position (of the first real token) is not
computed: the causal loss never scores the first token (`SoftPromptModel._causal`).

Where it is not exact or not applicable, `choose` falls back to concatenation and says why once:
encoders and seq2seq encoders (bidirectional: the prompt sees the input), model types without a
parity test (`VERIFIED`), and training with gradient checkpointing (HF's checkpointed layers drop
`past_key_values` so the recomputation cannot update the cache twice; the tokens would silently lose
the prompt). The same batch-1 keys/values, computed without grad, are kept by `PromptKV` and reused by
evaluation and by `generate` until the prompt parameter changes.
"""

from __future__ import annotations

import inspect
import logging

import torch
from torch import nn

from softprompt.errors import SoftPromptError

log = logging.getLogger(__name__)

EXECUTIONS = ("auto", "shared_prefix", "concat")

# Model types whose loss and prompt gradient equal the concatenation path, each checked by
# tests/test_shared_prefix.py (right and left padding, with a token offset). A type joins this set
# only with a tiny model in that test; "auto" uses concatenation for everything else
# (`execution: shared_prefix` forces it on an unlisted decoder).
VERIFIED = frozenset({
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "gemma", "gemma2", "gemma3_text", "phi", "phi3",
    "gpt2", "gpt_bigcode", "gpt_neox", "gptj", "opt", "falcon", "starcoder2", "olmo2", "granite", "stablelm",
    "cohere", "smollm3",
})

_logged: set[str] = set()


def _log_once(message: str, level: int = logging.INFO) -> None:
    if message not in _logged:
        _logged.add(message)
        log.log(level, message)


# ---------------------------------------------------------------------------------------------------
# The choice (made here only; SoftPromptModel.execution_mode calls it)


def choose(requested: str, base: nn.Module, kind: str) -> str:
    """"shared_prefix" or "concat" for this base now. `requested` is `PromptConfig.execution`."""
    if requested not in EXECUTIONS:
        raise SoftPromptError(f"prompt.execution: {requested!r} is not one of {list(EXECUTIONS)}")
    if requested == "concat":
        return "concat"
    blocker = structural_blocker(base, kind)
    if blocker is not None:
        if requested == "shared_prefix":
            raise SoftPromptError(f"prompt.execution: shared_prefix cannot run here: {blocker}; use auto or concat")
        # a decoder losing the fast path (e.g. to gradient checkpointing) is worth a warning
        _log_once(f"shared-prefix execution off, using concatenation: {blocker}",
                  logging.WARNING if kind == "causal" else logging.INFO)
        return "concat"
    model_type = getattr(base.config, "model_type", None)
    if requested == "auto" and model_type not in VERIFIED:
        _log_once(f"shared-prefix execution off for model type {model_type!r}: no parity test against "
                  "concatenation yet (force it with prompt.execution=shared_prefix)")
        return "concat"
    return "shared_prefix"


def structural_blocker(base: nn.Module, kind: str) -> str | None:
    """Why the prompt cannot be run once and shared here, or None."""
    if kind != "causal":
        return f"a {kind} model attends bidirectionally over the prompt and the input"
    params = inspect.signature(base.forward).parameters
    missing = [name for name in ("past_key_values", "position_ids", "inputs_embeds") if name not in params]
    if missing:
        return f"{type(base).__name__}.forward takes no {', '.join(missing)}"
    if base.training and any(getattr(m, "gradient_checkpointing", False) is True for m in base.modules()):
        return ("gradient checkpointing is on, and HF's checkpointed layers drop past_key_values "
                "(a cache cannot be updated twice by the recomputation)")
    return None


# ---------------------------------------------------------------------------------------------------
# The prompt's keys/values and the cache broadcast over a batch


def prompt_kv(base: nn.Module, prompt: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Run the prompt (p, D) once, batch 1. Per layer (keys, values), each (1, heads, p, head_dim),
    still attached to the graph when the prompt requires grad."""
    from transformers import DynamicCache

    p = prompt.shape[0]
    cache = DynamicCache()
    positions = torch.arange(p, device=prompt.device).unsqueeze(0)  # (1, p)
    # The decoder body only: the prompt's hidden states feed no logits (see the module docstring).
    base.base_model(inputs_embeds=prompt.unsqueeze(0), position_ids=positions, past_key_values=cache,
                    use_cache=True)
    return [(layer.keys, layer.values) for layer in cache.layers]


def broadcast_cache(kv: list[tuple[torch.Tensor, torch.Tensor]], batch: int):
    """A DynamicCache holding the batch-1 keys/values expanded (not copied) to `batch` rows.

    Filled layer by layer without `update`, whose first call would copy the expanded tensors
    (cat onto an empty tensor); the model's own update then appends the real tokens' keys/values
    (the one copy of the prompt rows per layer that standard attention needs)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()
    for keys, values in kv:
        layer = DynamicLayer()
        layer.lazy_initialization(keys, values)
        layer.keys = keys.expand(batch, -1, -1, -1)  # (B, heads, p, head_dim), a view
        layer.values = values.expand(batch, -1, -1, -1)
        cache.layers.append(layer)
    return cache


def forward(base: nn.Module, kv: list[tuple[torch.Tensor, torch.Tensor]], tokens: torch.Tensor,
            attention_mask: torch.Tensor, **kwargs):
    """The frozen model over the real tokens (B, L, D) after the shared prompt cache. Outputs are
    (B, L, ...), aligned with the input."""
    batch = tokens.shape[0]
    p = kv[0][0].shape[-2]
    mask = torch.cat([attention_mask.new_ones(batch, p), attention_mask], dim=1)  # (B, p+L)
    positions = p + attention_mask.long().cumsum(1) - 1  # (B, L); left pads get p-1, as on concat
    return base(inputs_embeds=tokens, attention_mask=mask, position_ids=positions,
                past_key_values=broadcast_cache(kv, batch), use_cache=True, **kwargs)


class PromptKV:
    """The prompt's batch-1 keys/values for calls that need no gradient into the prompt (evaluation,
    `generate`), computed once and reused until the prompt changes.

    The key is the prompt parameter's version counter (bumped by every in-place update: optimizer
    steps, `load_state_dict`, `copy_`) and storage (`.to(device)` moves it), the activation dtype and
    autocast state, and the base module. The base is frozen, so its weights are not part of the key.
    """

    def __init__(self):
        self._key = None
        self._kv = None

    def get(self, base: nn.Module, prompt: nn.Parameter, dtype: torch.dtype):
        if (torch.is_grad_enabled() and prompt.requires_grad) or base.training:
            return prompt_kv(base, prompt.to(dtype))  # fresh: gradients, or dropout in train mode
        device = prompt.device.type
        key = (prompt._version, prompt.data_ptr(), dtype, id(base), torch.is_autocast_enabled(device),
               torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None)
        if key != self._key:
            with torch.no_grad():
                self._kv = prompt_kv(base, prompt.to(dtype))
            self._key = key
        return self._kv

    def clear(self) -> None:
        self._key = self._kv = None


# ---------------------------------------------------------------------------------------------------
# Generation through HF `generate` with the prompt's cache


def generation_inputs(kv, embeds: torch.Tensor, mask: torch.Tensor, generate_kwargs: dict, generation_config):
    """Arguments for `base.generate` given `[prompt; tokens]` embeddings (B, p+L, D) and mask whose token
    part is left-padded (pads between the prompt and the tokens, so new tokens follow a real one).

    `generate` treats the first `p` columns as already in the cache and feeds only the last L; the
    cache is expanded to every sequence generate runs (beams, returned sequences)."""
    expand = generate_kwargs.get("num_beams") or getattr(generation_config, "num_beams", 1) or 1
    if expand == 1:
        expand = generate_kwargs.get("num_return_sequences") or getattr(generation_config, "num_return_sequences", 1) or 1
    return {"inputs_embeds": embeds, "attention_mask": mask,
            "past_key_values": broadcast_cache(kv, embeds.shape[0] * expand)}
