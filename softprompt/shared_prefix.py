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
encoders and seq2seq encoders (bidirectional: the prompt sees the input), training with gradient
checkpointing (HF's checkpointed layers drop the cache, so the recomputation cannot update it twice;
the tokens would silently lose the prompt), position schemes whose result depends on the length one
pass sees (dynamic NTK and LongRoPE scaling: the prompt's pass sees p tokens, concatenation p + L),
and any model that fails a one-time parity probe (a few tokens through both paths on the loaded model,
cached per model). The probe, not a list of model types, decides: a new architecture that is exact gets
the fast path, one that is not (or that cannot take our cache) keeps concatenation.

The same batch-1 keys/values, computed without grad, are kept by `PromptKV` and reused by evaluation
and by `generate` until the prompt parameter changes.
"""

from __future__ import annotations

import contextlib
import logging
import weakref

import torch
from torch import nn

from softprompt import compat
from softprompt.errors import SoftPromptError, gist

log = logging.getLogger(__name__)

EXECUTIONS = ("auto", "shared_prefix", "concat")

# Rotary scalings whose frequencies depend on the sequence length a pass sees (transformers'
# rope_type names; "su" is LongRoPE's early name in Phi-3 configs).
LENGTH_DEPENDENT_ROPE = frozenset({"dynamic", "longrope", "su"})

_logged: set[str] = set()


def log_once(message: str, level: int = logging.INFO) -> None:
    if message not in _logged:
        _logged.add(message)
        log.log(level, message)


# ---------------------------------------------------------------------------------------------------
# The choice (made here only; SoftPromptModel.execution_mode calls it)


def choose(requested: str, base: nn.Module, kind: str, source: nn.Module | None = None) -> str:
    """"shared_prefix" or "concat" for this base and prompt source now. `requested` is `PromptConfig.execution`.
    Per-row sources whose prompts are rows of their table take the shared prefix too (each distinct prompt
    runs once, `broadcast_cache` gives each row its own); a source that mixes prompts per row cannot."""
    if requested not in EXECUTIONS:
        raise SoftPromptError(f"prompt.execution: {requested!r} is not one of {list(EXECUTIONS)}")
    if requested == "concat":
        return "concat"
    blocker = structural_blocker(base, kind) or exactness_blocker(base)
    if blocker is None and source is not None and not getattr(source, "prompts_from_table", True):
        blocker = f"the prompt source ({type(source).__name__}) builds each row's prompt anew, so no cache is shared"
    if blocker is not None:
        if requested == "shared_prefix":
            raise SoftPromptError(f"prompt.execution: shared_prefix cannot run here: {blocker}; use auto or concat")
        # a decoder losing the fast path (e.g. to gradient checkpointing) is worth a warning
        log_once(f"shared-prefix execution off, using concatenation: {blocker}",
                  logging.WARNING if kind == "causal" else logging.INFO)
        return "concat"
    return "shared_prefix"


def structural_blocker(base: nn.Module, kind: str) -> str | None:
    """Why the prompt cannot be run once and shared here in principle, or None."""
    if kind != "causal":
        return f"a {kind} model attends bidirectionally over the prompt and the input"
    if base.training and any(getattr(m, "gradient_checkpointing", False) is True for m in base.modules()):
        return ("gradient checkpointing is on, and HF's checkpointed layers drop the key/value cache "
                "(a cache cannot be updated twice by the recomputation)")
    rope = rope_types(base.config) & LENGTH_DEPENDENT_ROPE
    if rope:
        return (f"its rotary scaling ({', '.join(sorted(rope))}) depends on the length each pass sees, so the "
                "prompt's own pass would be scaled differently from the concatenated row")
    return None


def column_sensitive(config) -> str | None:
    """What in this config makes attention depend on key *columns* rather than positions alone (so a
    pad column between the prompt and the tokens changes the result), or None. Read from the config:
    windows can be thousands of tokens wide, beyond what a probe of a few tokens can see."""
    for cfg in with_text_config(config):
        if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True) is not False:
            return f"sliding-window attention (window {cfg.sliding_window})"
        kinds = set(getattr(cfg, "layer_types", None) or ()) - {"full_attention"}
        if kinds:
            return f"non-global attention layers ({', '.join(sorted(map(str, kinds)))})"
        if "local" in {str(k) for k in (getattr(cfg, "attention_layers", None) or ())}:
            return "local attention layers"
        if getattr(cfg, "attention_chunk_size", None):
            return f"chunked attention ({cfg.attention_chunk_size})"
        attn = getattr(cfg, "attn_config", None)
        if getattr(cfg, "alibi", False) or getattr(attn, "alibi", False) or (isinstance(attn, dict) and attn.get("alibi")) \
                or getattr(cfg, "model_type", None) in ("bloom", "mpt"):
            return "ALiBi position biases"
    return None


def with_text_config(config) -> list:
    """The config and, for composite (e.g. multimodal) models, its text model's config."""
    return [config, config.get_text_config()] if hasattr(config, "get_text_config") else [config]


def rope_types(config) -> set[str]:
    """Every rope type a config declares (`rope_scaling` / `rope_parameters`, per layer type too)."""
    found: set[str] = set()

    def visit(value) -> None:
        if isinstance(value, dict):
            for key in ("rope_type", "type"):
                if isinstance(value.get(key), str):
                    found.add(value[key])
            for inner in value.values():
                if isinstance(inner, dict):
                    visit(inner)

    for cfg in with_text_config(config):
        for attr in ("rope_scaling", "rope_parameters"):
            visit(getattr(cfg, attr, None))
    return found - {"default"}


_probed: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def exactness_blocker(base: nn.Module) -> str | None:
    """Why the shared prefix is not exact on this loaded model, from a parity probe cached per model and
    per what can change under it (device, dtype, attention implementation): moving or casting the model,
    or switching attention kernels, probes again. Asked on every forward, so the key is cheap to read."""
    table = base.get_input_embeddings().weight
    state = (table.device, table.dtype, getattr(base.config, "_attn_implementation", None))
    results = _probed.setdefault(base, {})
    if state not in results:
        results[state] = parity_probe(base)
    return results[state]


def parity_probe(base: nn.Module) -> str | None:
    """Run 3 prompt rows and 2 right-padded rows of 3 tokens (embedding-table rows, so the scale is real)
    through concatenation and through the shared prefix, no grad, eval mode; None when the real
    positions' last hidden states agree to the dtype's rounding, else why not."""
    table = base.get_input_embeddings().weight
    if table.numel() == 0:
        return "its embedding table is sharded away from this process (e.g. ZeRO-3), so it cannot be probed"
    generator = torch.Generator().manual_seed(0)
    rows = table.detach()[torch.randint(table.shape[0], (9,), generator=generator).to(table.device)]  # (9, D)
    prompt, tokens = rows[:3], rows[3:].view(2, 3, -1)  # (p=3, D), (B=2, L=3, D)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], device=table.device)  # (B, L)
    # no dropout: the probe must not draw from the global RNG, nor differ by chance
    with eval_mode(base):  # no autocast: the probe compares the two paths at the model's own precision
        return _probe(base, table, prompt, tokens, mask)


def _probe(base, table, prompt, tokens, mask) -> str | None:
    try:
        if not compat.fills_cache(base.base_model, prompt.unsqueeze(0)):
            return f"{type(base).__name__} does not fill a {compat.CACHE_ARG!r} key/value cache passed to it"
        # The body's last hidden states, not logits: the LM head acts on each position alone, so it cannot
        # make the paths differ, and a model trained with a head of its own never runs it (not even here).
        body = base.base_model
        with torch.no_grad(), torch.autocast(table.device.type, enabled=False):
            full_mask = torch.cat([mask.new_ones(2, 3), mask], dim=1)  # (B, p+L)
            full = body(inputs_embeds=torch.cat([prompt.expand(2, -1, -1), tokens], dim=1),  # (B, p+L, D)
                        attention_mask=full_mask, position_ids=(full_mask.cumsum(1) - 1).clamp(min=0),
                        use_cache=False).last_hidden_state[:, -3:].float()
            shared = forward(body, prompt_kv(base, prompt.unsqueeze(0)), tokens, mask).last_hidden_state[:, -3:].float()
    except Exception as e:  # noqa: BLE001 - any failure of the fast path on this model means "not exact here"
        return f"the shared-prefix pass fails on {type(base).__name__} ({gist(e, limit=120, typed=True)})"
    real = mask.bool()
    diff = (full - shared).abs()[real].max().item()
    scale = full[real].abs().max().item()
    # the loosest precision anywhere in the model sets the rounding both paths may differ by
    half = any(p.dtype in (torch.float16, torch.bfloat16) for p in base.parameters())
    tol = (3e-2 if half else 1e-4) * max(1.0, scale)
    if not diff <= tol:
        return (f"a parity probe on the loaded model differs from concatenation by {diff:.2e} in its last hidden states "
                f"(tolerance {tol:.1e})")
    return None


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """`module` in eval mode for the duration, each submodule's own mode restored after (a user may keep
    some in eval while the rest trains)."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


# ---------------------------------------------------------------------------------------------------
# The prompt's keys/values and the cache broadcast over a batch


def prompt_kv(base: nn.Module, prompts: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Run each distinct prompt once: prompts (K, p, D) as a batch of K. Per layer (keys, values), each
    (K, heads, p, head_dim), still attached to the graph when the prompts require grad."""
    k, p = prompts.shape[:2]
    cache = compat.new_cache()
    positions = torch.arange(p, device=prompts.device).unsqueeze(0).expand(k, -1)  # (K, p)
    # The decoder body only: the prompt's hidden states feed no logits (see the module docstring).
    base.base_model(inputs_embeds=prompts, position_ids=positions, use_cache=True, **compat.with_cache(cache))
    return compat.cache_layers(cache)


def broadcast_cache(kv: list[tuple[torch.Tensor, torch.Tensor]], batch: int, index: torch.Tensor | None = None):
    """A DynamicCache giving each of `batch` rows its prompt's keys/values.

    One prompt (index None, K = 1): the batch-1 keys/values expanded (not copied) over the rows. Per-row
    prompts (index (B,) into the K prompts): each row's prompt gathered, one copy of p rows per row, which
    the model's own cache update would make anyway. Filled layer by layer without `update`, whose first
    call would copy the expanded tensors (cat onto an empty tensor); the model's own update then appends
    the real tokens' keys/values (the one copy of the prompt rows per layer that standard attention needs)."""
    if index is None:
        # (1, heads, p, head_dim) -> (B, heads, p, head_dim), views
        return compat.cache_from_layers([(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in kv])
    # (K, heads, p, head_dim) -> (B, heads, p, head_dim), row b from prompt index[b]
    return compat.cache_from_layers([(k.index_select(0, index), v.index_select(0, index)) for k, v in kv])


def forward(module: nn.Module, kv: list[tuple[torch.Tensor, torch.Tensor]], tokens: torch.Tensor,
            attention_mask: torch.Tensor, index: torch.Tensor | None = None, **kwargs):
    """`module` (the model, or its body for hidden states only) over the real tokens (B, L, D) after the
    prompt cache (`index`: each row's prompt, see `broadcast_cache`). Outputs are (B, L, ...), aligned
    with the input."""
    batch = tokens.shape[0]
    p = kv[0][0].shape[-2]
    mask = torch.cat([attention_mask.new_ones(batch, p), attention_mask], dim=1)  # (B, p+L)
    positions = p + attention_mask.long().cumsum(1) - 1  # (B, L); left pads get p-1, as on concat
    return module(inputs_embeds=tokens, attention_mask=mask, position_ids=positions, use_cache=True,
                  **compat.with_cache(broadcast_cache(kv, batch, index)), **kwargs)


class PromptKV:
    """The prompts' keys/values for calls that need no gradient into the prompt (evaluation, `generate`),
    computed once and reused until the prompt changes.

    The key is the source's `version()` (the prompt parameter's version counter, bumped by every in-place
    update: optimizer steps, `load_state_dict`, `copy_`, and its storage, which `.to(device)` moves), the
    activation dtype and autocast state, and the base module. The base is frozen, so its weights are not
    part of the key.
    """

    def __init__(self):
        self._key = None
        self._kv = None

    def get(self, base: nn.Module, source: nn.Module, dtype: torch.dtype):
        """Per layer (keys, values) of every prompt of `source`, (K, heads, p, head_dim)."""
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in source.parameters())
        if needs_grad or base.training:
            return prompt_kv(base, source.prompt_table(dtype))  # fresh: gradients, or dropout in train mode
        device = next(source.parameters()).device.type
        key = (source.version(), dtype, id(base), torch.is_autocast_enabled(device),
               torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None)
        if key != self._key:
            with torch.no_grad():
                self._kv = prompt_kv(base, source.prompt_table(dtype))
            self._key = key
        return self._kv

    def clear(self) -> None:
        self._key = self._kv = None


# ---------------------------------------------------------------------------------------------------
# Generation through HF `generate` with the prompt's cache


def generation_inputs(kv, embeds: torch.Tensor, mask: torch.Tensor, generate_kwargs: dict, generation_config,
                      index: torch.Tensor | None = None):
    """Arguments for `base.generate` given `[prompt; tokens]` embeddings (B, p+L, D) and mask whose token
    part is left-padded (pads between the prompt and the tokens, so new tokens follow a real one).

    `generate` treats the first `p` columns as already in the cache and feeds only the last L; the
    cache is expanded to every sequence generate runs (beams, returned sequences), which `generate`
    orders row by row (row b's sequences are consecutive), so per-row prompts repeat in place."""
    n = sequences_per_row(generate_kwargs, generation_config)
    index = index.repeat_interleave(n) if index is not None else None
    return {"inputs_embeds": embeds, "attention_mask": mask,
            **compat.with_cache(broadcast_cache(kv, embeds.shape[0] * n, index))}


def generation_setting(name: str, generate_kwargs: dict, model_config):
    """A generation setting as `generate` resolves it: a keyword argument, else a passed
    `generation_config`'s value, else the model's own generation config (unset fields are None)."""
    for source in (generate_kwargs, generate_kwargs.get("generation_config"), model_config):
        value = source.get(name) if isinstance(source, dict) else getattr(source, name, None)
        if value is not None:
            return value
    return None


def sequences_per_row(generate_kwargs: dict, model_config) -> int:
    """How many sequences `generate` runs per input row: beams for beam search, else returned sequences."""
    beams = int(generation_setting("num_beams", generate_kwargs, model_config) or 1)
    return beams if beams > 1 else int(generation_setting("num_return_sequences", generate_kwargs, model_config) or 1)


def candidate_decoding(generate_kwargs: dict, model_config) -> bool:
    """Whether `generate` will decode with candidates (an assistant model, prompt lookup, early exit). Its
    first step feeds the whole input again on top of the cache it was given, so a prompt cache passed in
    would be seen twice: such calls concatenate instead."""
    if generate_kwargs.get("assistant_model") is not None:
        return True
    return any(generation_setting(name, generate_kwargs, model_config)
               for name in ("prompt_lookup_num_tokens", "assistant_early_exit"))
