"""The prompt-source protocol: what produces the virtual rows for a batch (DESIGN.md §5).

A source is an `nn.Module` holding its own trainable state. Nothing outside `layers/` reads that state
directly: the model, the shared-prefix path, the optimizer and the adapter go through these methods.

- Row-invariant sources (`row_invariant = True`: the plain prompt, DePT's prompt plus token offset)
  give every row the same prompt, so the prompt can run once per batch (shared prefix) and the fused
  kernel can write it. Per-row sources (a bank) give row b the prompt `prompt_table()[row_index(...)[b]]`;
  the shared-prefix path then runs each distinct prompt once and gives each row its own prompt's cache
  (`shared_prefix.broadcast_cache`), which is the one place that difference is handled.
- `describe()` and `state_dict()` are what an adapter stores; the registry entry's `restore` rebuilds the
  source from them. `peft_view()` and `serving_view()` are the exports' views of it.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class PromptSource(Protocol):
    row_invariant: bool  # one prompt for every row
    # Every row's prompt is a row of prompt_table() (True for plain, DePT, a bank): the shared-prefix path
    # can serve it from the table's cache. A source that mixes prompts per row (a soft selection) sets
    # False, and execution falls back to concatenation (shared_prefix.choose).
    prompts_from_table: bool
    kernel: str  # auto | torch | triton (layers/fused.py)

    @property
    def num_virtual_tokens(self) -> int: ...  # p: virtual rows per input row

    @property
    def dim(self) -> int: ...

    def prompt_table(self, dtype: torch.dtype) -> torch.Tensor: ...  # (K, p, D): every distinct prompt

    # Which row of prompt_table each input row takes, (B,), or None: all take row 0. `prompt_index` is the
    # caller's choice, or the model's selector's (selectors/), which SoftPromptModel computes from the input.
    def row_index(self, prompt_index: torch.Tensor | None, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  table: nn.Module) -> torch.Tensor | None: ...

    def version(self) -> tuple: ...  # changes when the prompt rows may have changed (cache key)

    # (B, L, D); `index` is row_index's result, for sources whose token offsets differ per row (a DePT bank)
    def token_embeds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, table: nn.Module,
                     index: torch.Tensor | None = None) -> torch.Tensor: ...

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, table: nn.Module,
                prompt_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...  # (B, p+L, D), (B, p+L)

    @property
    def offsets_tokens(self) -> bool: ...  # whether tokens get an offset (generation must add it to new tokens)

    def generation_offset(self, token_mask: torch.Tensor, index: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor] | None: ...  # (rows, (B', T) row per token)

    def describe(self) -> dict: ...  # {"type": <registry key>, ...}

    def peft_view(self) -> tuple[str | None, str | None]: ...  # (state key of PEFT's prompt_embeddings or None, caveat)

    # optional: several prompts that PEFT can hold one by one, (K, p, D), or None (adapter.py writes members/)
    # def peft_members(self) -> torch.Tensor | None: ...

    def serving_view(self, dtype: torch.dtype) -> tuple[dict[str, dict[str, torch.Tensor]], dict]: ...
