"""The key selector: a cheap scorer with no extra pass. Each prompt of the bank has a key (D,); a row takes
the prompt whose key is most similar (cosine) to the row's mean input embedding over its context.

Keys are learned as an online k-means (MacQueen 1967) over the training rows: every training step, the
rows assigned to prompt k move key k to the running mean of their embeddings (count-weighted, so it
settles), while the prompt trains on them: "one prompt per data cluster", both found in the one loop.
A key starts as the mean of its prompt's own rows (a deterministic, data-free start that differs per
prompt), and its first row replaces it (count 1). Keys and counts are buffers: checkpoints and adapters
keep them, the optimizer never sees them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from softprompt.errors import SoftPromptError
from softprompt.selectors import SelectorConfig, mean_embedding


@dataclass(frozen=True)
class KeyConfig(SelectorConfig):
    type: str = "key"


class KeySelector(nn.Module):
    def __init__(self, keys: torch.Tensor, counts: torch.Tensor | None = None, context_tokens: int | None = None,
                 train_with: str = "self"):
        super().__init__()
        self.register_buffer("keys", keys.detach().float().clone())  # (K, D)
        # float64: a float32 count stops growing by 1 past 2^24 rows
        zeros = torch.zeros(keys.shape[0], dtype=torch.float64)
        self.register_buffer("counts", zeros if counts is None else counts.detach().to(torch.float64).clone())  # (K,)
        self.context_tokens, self.train_with = context_tokens, train_with

    def check_source(self, source) -> None:
        if tuple(self.keys.shape) != (source.num_prompts, source.dim):
            raise SoftPromptError(f"selector key: {self.keys.shape[0]} keys of width {self.keys.shape[1]} for a bank of "
                                  f"{source.num_prompts} prompts of width {source.dim}; give one key per prompt")

    def scores(self, model, input_ids, attention_mask, context, labels=None) -> torch.Tensor:
        rows = mean_embedding(model, input_ids, context)  # (B, D) fp32
        # fp32 whatever dtype the module was cast to (a bf16 engine casts buffers too)
        return F.normalize(rows, dim=-1) @ F.normalize(self.keys.float(), dim=-1).T  # (B, K) cosine similarity

    @torch.no_grad()
    def observe(self, model, input_ids: torch.Tensor, context: torch.Tensor, index: torch.Tensor) -> None:
        """MacQueen's update: each key moves to the running mean of every row ever assigned to it."""
        rows = mean_embedding(model, input_ids, context)  # (B, D) fp32
        k = self.keys.shape[0]
        sums = torch.zeros(self.keys.shape, dtype=torch.float32, device=rows.device).index_add_(0, index, rows)  # (K, D)
        n = torch.bincount(index, minlength=k).to(torch.float64)  # (K,)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every process moves the keys by the whole global batch, so they stay equal across processes and
            # equal to one process on that batch (the update depends only on these sums)
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(n)
        self.counts += n
        seen = n > 0
        keys = self.keys.float()
        keys[seen] += (sums[seen] - n[seen, None].float() * keys[seen]) / self.counts[seen, None].float()
        self.keys.copy_(keys)

    def describe(self) -> dict:
        return {"type": "key", "num_prompts": int(self.keys.shape[0]), "context_tokens": self.context_tokens,
                "train_with": self.train_with}


def build(cfg: KeyConfig, source, table: torch.Tensor) -> KeySelector:
    keys = source.prompt_table(torch.float32).detach().mean(dim=1)  # (K, D): each prompt's own centroid
    return KeySelector(keys, context_tokens=cfg.context_tokens, train_with=cfg.train_with)


def restore(description: dict, state: dict[str, torch.Tensor]) -> KeySelector:
    return KeySelector(state["keys"], state["counts"], description.get("context_tokens"),
                       description.get("train_with", "self"))
