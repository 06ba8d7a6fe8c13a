"""Trainable heads on the aligned hidden states of a frozen body (DESIGN.md §5).

A head reads `hidden_states` (B, L, D), aligned with the input (no virtual positions), and the input's
attention mask, and returns (B, num_outputs). The model runs the base's body only when a head is asked
for, so the LM head's (B, L, V) logits are never computed for a classifier.

Pooling (PTEC, Buchner et al. NAACL 2024, https://aclanthology.org/2024.naacl-industry.6/, pools the
last real token of a decoder):
- last: the last real token of each row, whatever the padding side (causal models: the only position
  that has seen the whole input);
- first: the first real token (an encoder's [CLS] / <s>);
- mean: the mean over real tokens;
- auto (the default): last for causal models; mean for encoders and a seq2seq model's encoder, because
  sentence encoders (all-MiniLM, SBERT) are trained to be mean-pooled, RoBERTa's <s> and T5 (no [CLS] at
  all) are trained for nothing in particular, and mean is as good as [CLS] on BERT when the head trains.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from softprompt.errors import ConfigError

POOLINGS = ("auto", "last", "first", "mean")


@dataclass(frozen=True)
class HeadConfig:
    type: str = "linear"  # linear: one affine map from the pooled hidden state
    pooling: str = "auto"  # auto | last | first | mean (see the module docstring)
    num_outputs: int | None = None  # classes (CE) or labels (multi-label BCE); None: one per objective label
    lr: float | None = None  # None: optim.lr
    weight_decay: float | None = None  # None: optim.weight_decay

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ConfigError(f"head.pooling: {self.pooling!r} is not valid; choose one of {list(POOLINGS)}")
        if self.num_outputs is not None and self.num_outputs < 1:
            raise ConfigError(f"head.num_outputs: must be >= 1, got {self.num_outputs}")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, L, D) -> (B, D) over the real (mask = 1) positions of each row."""
    mask = attention_mask.long()  # (B, L)
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # (B, L)
    real = torch.where(mask.bool(), positions, -1 if pooling == "last" else mask.shape[1])
    index = real.amax(1) if pooling == "last" else real.amin(1)  # (B,)
    index = index.clamp(0, mask.shape[1] - 1)  # an all-pad row pools position 0 (its loss should be masked)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]  # (B, D)


class LinearHead(nn.Module):
    def __init__(self, dim: int, num_outputs: int, pooling: str = "last", generator: torch.Generator | None = None):
        super().__init__()
        self.pooling = pooling
        self.proj = nn.Linear(dim, num_outputs)  # fp32 master weights, like the prompt
        if generator is not None:  # a generator keeps the global RNG (dropout, data order) untouched
            bound = 1 / dim ** 0.5  # nn.Linear's own init range, drawn from `generator`
            with torch.no_grad():
                self.proj.weight.uniform_(-bound, bound, generator=generator)
                self.proj.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = pool(hidden, attention_mask, self.pooling)  # (B, D)
        return self.proj(pooled.to(self.proj.weight.dtype))  # (B, num_outputs)

    def describe(self) -> dict:
        return {"type": "linear", "dim": self.proj.in_features, "num_outputs": self.proj.out_features,
                "pooling": self.pooling}


def resolved_pooling(pooling: str, kind: str) -> str:
    """`auto` made concrete for a base of `kind` (causal | seq2seq | encoder)."""
    if pooling != "auto":
        return pooling
    return "last" if kind == "causal" else "mean"


def build(cfg: HeadConfig, dim: int, seed: int, kind: str) -> LinearHead:
    if cfg.num_outputs is None:
        raise ConfigError("head.num_outputs: not set, and no objective labels give it; set head.num_outputs")
    pooling = resolved_pooling(cfg.pooling, kind)  # the adapter records the concrete one
    return LinearHead(dim, cfg.num_outputs, pooling, generator=torch.Generator().manual_seed(seed))


def param_groups(head: nn.Module, cfg: HeadConfig, optim) -> list[dict]:
    return [{"params": list(head.parameters()), "lr": optim.lr if cfg.lr is None else cfg.lr,
             "weight_decay": optim.weight_decay if cfg.weight_decay is None else cfg.weight_decay, "name": "head"}]


def restore(description: dict, state: dict[str, torch.Tensor]) -> LinearHead:
    head = LinearHead(description["dim"], description["num_outputs"], description["pooling"])
    head.load_state_dict(state)
    return head
