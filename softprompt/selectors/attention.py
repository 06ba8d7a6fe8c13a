"""The attention selector of IDP: Hoang, Cho, Merth, Rastegari, Wang, "(Dynamic) Prompting might be all you
need to repair Compressed LLMs" (2023), https://arxiv.org/abs/2310.00867. Per input, the prompt of the bank
that the input's tokens attend to most. The paper gives no code or body; this is the reconstruction of
research/methods.md §5.3, with its position pitfalls (§5.4) removed by construction:

- One scoring pass per batch: every prompt's keys/values are computed alone (K prompts as a batch of K,
  positions 0..p-1 each: the shared prefix's `prompt_kv`, cached between calls while the bank is unchanged)
  and laid side by side as one cache of K·p columns, so no prompt sees another (a block-diagonal prompt
  region). The row's context tokens then run once over that cache at positions p, p+1, ...: the positions
  they take after the one chosen prompt when the row really runs. Every prompt therefore sits at the same
  relative distance from every token: no block wins by position (no attention-sink order effect), and
  the score does not depend on the bank's order.
- Score of prompt k for a row: the attention probability its context tokens put on prompt k's p columns,
  summed over those columns, averaged over the chosen heads, the context positions and the chosen
  layers (`layers`, `heads`; empty: all). The chosen layers' probabilities are recomputed from the query
  and keys the model hands its attention function (compat.attention_capture); no layer materialises
  more than that, and the others run SDPA.

Cost per batch: the context tokens once more over K·p extra key columns (the prompts' own pass is cached
at inference). Where the prompt cache is not exact for the model (windows, ALiBi, length-dependent RoPE,
encoders and seq2seq), this selector refuses; the key selector works everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from softprompt import compat, shared_prefix
from softprompt.errors import ConfigError, SoftPromptError
from softprompt.selectors import SelectorConfig


@dataclass(frozen=True)
class AttentionConfig(SelectorConfig):
    type: str = "attention"
    layers: tuple[int, ...] = ()  # layer numbers (negative: from the last); empty: every layer
    heads: tuple[int, ...] = ()  # query heads averaged (negative: from the last); empty: every head

    def __post_init__(self):
        super().__post_init__()
        for key in ("layers", "heads"):
            if len(set(getattr(self, key))) != len(getattr(self, key)):
                raise ConfigError(f"selector.{key}: {list(getattr(self, key))} names one twice; name each once")


def blocker(model) -> str | None:
    """Why the side-by-side prompt cache is not exact for this model, or None: the shared prefix's own reasons
    (checked in eval mode, where gradient checkpointing does not apply), and key columns that count (the
    prompts' K·p columns would sit inside a window or an ALiBi distance)."""
    base = model.base
    return (shared_prefix.structural_blocker(base, model.kind) or shared_prefix.column_sensitive(base.config)
            or shared_prefix.exactness_blocker(base))


def pick(numbers: tuple[int, ...], count: int, what: str) -> list[int]:
    """`numbers` (negative from the end) as indices into `count` things; empty: all of them."""
    if not numbers:
        return list(range(count))
    bad = [n for n in numbers if not -count <= n < count]
    if bad:
        raise SoftPromptError(f"selector.{what}: {bad} out of range: this model has {count} {what} "
                              f"(0..{count - 1}, or -{count}..-1 from the last)")
    return sorted(n % count for n in numbers)


def layer_mass(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, kwargs: dict, k: int, p: int,
               heads: list[int]) -> torch.Tensor:
    """Attention probability each query puts on each prompt block (B, T, K), averaged over `heads`.
    query (B, H, T, hd) after RoPE; key (B, Hkv, S, hd) with the K·p prompt columns first."""
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise SoftPromptError("selector attention: this model softcaps its attention logits or adds attention sinks, "
                              "which the probability read-out does not reproduce; use selector.type: key")
    batch, n_heads, t, dim = query.shape
    key = key.repeat_interleave(n_heads // key.shape[1], dim=1)  # grouped-query: (B, H, S, hd)
    scaling = kwargs.get("scaling") or dim ** -0.5
    logits = (query[:, heads].float() @ key[:, heads].float().transpose(-1, -2)) * scaling  # (B, h, T, S)
    if mask is None:  # SDPA's "causal, no padding": query i is the (S - T + i)-th column
        s = key.shape[2]
        mask = torch.ones(t, s, dtype=torch.bool, device=query.device).tril(diagonal=s - t)[None, None]
    if mask.dtype == torch.bool:
        logits = logits.masked_fill(~mask[..., -key.shape[2]:], float("-inf"))
    else:
        logits = logits + mask[..., -key.shape[2]:].float()
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # fully masked (pad) queries: 0
    return probs[..., :k * p].unflatten(-1, (k, p)).sum(-1).mean(dim=1)  # (B, h, T, K) -> (B, T, K)


def side_by_side(kv: list[tuple[torch.Tensor, torch.Tensor]], batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the K prompts' keys/values (K, heads, p, hd) as one row of K·p columns, expanded over rows."""
    out = []
    for keys, values in kv:
        k, heads, p, dim = keys.shape
        row = [t.permute(1, 0, 2, 3).reshape(1, heads, k * p, dim) for t in (keys, values)]  # (1, heads, K·p, hd)
        out.append(tuple(r.expand(batch, -1, -1, -1) for r in row))
    return out


class AttentionSelector(nn.Module):
    def __init__(self, layers: tuple[int, ...] = (), heads: tuple[int, ...] = (), context_tokens: int | None = None,
                 train_with: str = "self"):
        super().__init__()
        self.layers, self.heads = tuple(layers), tuple(heads)
        self.context_tokens, self.train_with = context_tokens, train_with

    @torch.no_grad()
    def scores(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, context: torch.Tensor,
               labels=None) -> torch.Tensor:
        reason = blocker(model)
        if reason is not None:
            raise SoftPromptError(f"selector attention: cannot score prompts side by side here: {reason}; use "
                                  "selector.type: key")
        bank, base = model.prompt, model.base
        last = int(context.long().cumsum(dim=1).argmax(dim=1).max()) + 1  # columns up to the last context token
        ids, context = input_ids[:, :last], context[:, :last].long()  # (B, L')
        # the tokens without any member's DePT offset: an offset belongs to the row once it runs with its member
        tokens = model.input_table(ids)  # (B, L', D)
        kv = model._prompt_kv.get(base, bank, tokens.dtype)  # per layer (K, heads, p, hd), cached
        k, p = bank.num_prompts, bank.num_virtual_tokens
        layers = set(pick(self.layers, len(kv), "layers"))
        heads = pick(self.heads, base.config.get_text_config().num_attention_heads, "heads")
        batch = ids.shape[0]
        found: list[torch.Tensor] = []
        calls = [0]

        def hook(module, query, key, mask, kwargs):
            if calls[0] in layers:
                found.append(layer_mass(query, key, mask, kwargs, k, p, heads))  # (B, L', K)
            calls[0] += 1

        mask = torch.cat([context.new_ones(batch, k * p), context], dim=1)  # (B, K·p + L')
        positions = p + context.cumsum(dim=1) - 1  # (B, L'): after one p-token prompt, as the row will run
        with compat.attention_capture(base, hook):
            base.base_model(inputs_embeds=tokens, attention_mask=mask, position_ids=positions.clamp(min=p - 1),
                            use_cache=True, **compat.with_cache(compat.cache_from_layers(side_by_side(kv, batch))))
        if calls[0] != len(kv):
            raise SoftPromptError(f"selector attention: {type(base).__name__} ran {calls[0]} of its {len(kv)} attention "
                                  "layers through transformers' attention interface, so their probabilities cannot be "
                                  "read; use selector.type: key")
        weights = context.float().unsqueeze(-1)  # (B, L', 1): context positions only
        per_layer = [(m * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0) for m in found]  # each (B, K)
        return torch.stack(per_layer).mean(dim=0)  # (B, K)

    def observe(self, model, input_ids, context, index) -> None:
        return None

    def describe(self) -> dict:
        return {"type": "attention", "layers": list(self.layers), "heads": list(self.heads),
                "context_tokens": self.context_tokens, "train_with": self.train_with}


def build(cfg: AttentionConfig, source, table: torch.Tensor) -> AttentionSelector:
    return AttentionSelector(cfg.layers, cfg.heads, cfg.context_tokens, cfg.train_with)


def restore(description: dict, state: dict[str, torch.Tensor]) -> AttentionSelector:
    return AttentionSelector(tuple(description.get("layers", ())), tuple(description.get("heads", ())),
                             description.get("context_tokens"), description.get("train_with", "self"))
