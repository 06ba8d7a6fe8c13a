"""The shared prompt-embedding layer: (input_ids, attention_mask) -> what the frozen model consumes.

Every method trains through this one module. It owns the prompt parameter (kept in fp32 and cast to
the activation dtype at use) and an optional `offset` module that adds a per-real-token delta to the
frozen token embeddings (DePT's low-rank update plugs in there). It gives either the concatenated
`[prompt; tokens]` embeddings (the reference path, any model) or the two parts separately (for
paths that run the prompt once, e.g. shared-prefix execution).

The frozen embedding table is passed in at call time, not stored, so the base model's weights are
never registered twice.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from softprompt.layers import fused


class TokenOffset(Protocol):
    """An nn.Module adding one of its `rows` to each token's embedding (DePT's `gamma * A @ B`).

    Split in two so a fused kernel can do the gather and the add in one pass: `rows()` is the (s, D)
    fp32 offset matrix, `index(mask)` the (B, L) row each token takes (-1: none, e.g. padding).
    `describe()` returns `{"type": <key in layers.OFFSETS>, **constructor kwargs}` for adapters.
    """

    def rows(self) -> torch.Tensor: ...

    def index(self, attention_mask: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> dict: ...


def apply_offset(embeds: torch.Tensor, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """embeds (B, L, D) + rows[index] where index >= 0. The reference the fused kernel must equal."""
    delta = rows.to(embeds.dtype)[index.clamp(min=0)]  # (B, L, D)
    return embeds + delta * (index >= 0).unsqueeze(-1).to(embeds.dtype)


class PromptEmbedding(nn.Module):
    def __init__(self, prompt_init: torch.Tensor, offset: nn.Module | None = None, kernel: str = "auto"):
        super().__init__()
        self.prompt = nn.Parameter(prompt_init.detach().float().clone())  # (p, D) fp32 master copy
        self.offset = offset
        self.kernel = kernel  # auto | torch | triton: the fused kernel (layers/fused.py) or this torch path

    @property
    def num_virtual_tokens(self) -> int:
        return self.prompt.shape[0]

    @property
    def dim(self) -> int:
        return self.prompt.shape[1]

    def prompt_embeds(self, dtype: torch.dtype) -> torch.Tensor:
        return self.prompt.to(dtype)  # (p, D)

    def token_embeds(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, table: nn.Module
    ) -> torch.Tensor:
        if fused.enabled(self.kernel, table, self.prompt.device):
            rows, index = self._offset_parts(attention_mask)
            return fused.token_embeds(table.weight, input_ids, rows, index)  # (B, L, D)
        embeds = table(input_ids)  # (B, L, D)
        if self.offset is not None:
            embeds = apply_offset(embeds, self.offset.rows(), self.offset.index(attention_mask))
        return embeds

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, table: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenation path: returns `[prompt; tokens]` (B, p+L, D) and its mask (B, p+L)."""
        batch = input_ids.shape[0]
        if fused.enabled(self.kernel, table, self.prompt.device):
            rows, index = self._offset_parts(attention_mask)
            embeds = fused.concat_embeds(self.prompt, table.weight, input_ids, rows, index)  # (B, p+L, D)
        else:
            tokens = self.token_embeds(input_ids, attention_mask, table)  # (B, L, D)
            prompt = self.prompt_embeds(tokens.dtype).unsqueeze(0).expand(batch, -1, -1)  # (B, p, D)
            embeds = torch.cat([prompt, tokens], dim=1)  # (B, p+L, D)
        ones = attention_mask.new_ones(batch, self.num_virtual_tokens)
        mask = torch.cat([ones, attention_mask], dim=1)  # (B, p+L)
        return embeds, mask

    def _offset_parts(self, attention_mask: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.offset is None:
            return None, None
        return self.offset.rows(), self.offset.index(attention_mask)  # (s, D), (B, L)
