"""The row-invariant prompt source: one prompt for every row, with an optional token offset.

The plain prompt (Lester et al.) and DePT's prompt (the same module with a `DeptOffset`) are this
module. It owns the prompt parameter (kept in fp32 and cast to the activation dtype at use) and an
optional `offset` module that adds a per-real-token delta to the frozen token embeddings. It gives
either the concatenated `[prompt; tokens]` embeddings (the reference path, any model) or the two parts
separately (for paths that run the prompt once, e.g. shared-prefix execution). It implements the
`PromptSource` protocol (layers/source.py); nothing outside `layers/` reads its parameters.

The frozen embedding table is passed in at call time, not stored, so the base model's weights are
never registered twice.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from softprompt.errors import SoftPromptError
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


def prompt_groups(prompt: nn.Parameter, offset: nn.Module | None, lr: float, weight_decay: float,
                  offset_lr: float | None = None, offset_weight_decay: float | None = None) -> list[dict]:
    """The prompt's optimizer group, and the offset's (one module, or a bank's list of them) at its own rate."""
    groups = [{"params": [prompt], "lr": lr, "weight_decay": weight_decay, "name": "prompt"}]
    if offset is not None:
        groups.append({"params": list(offset.parameters()), "name": "offset",
                       "lr": lr if offset_lr is None else offset_lr,
                       "weight_decay": weight_decay if offset_weight_decay is None else offset_weight_decay})
    return groups


class PromptEmbedding(nn.Module):
    row_invariant = True  # every row gets the same prompt: the shared-prefix path and the fused kernel apply
    prompts_from_table = True

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

    def prompt_table(self, dtype: torch.dtype) -> torch.Tensor:
        """Every distinct prompt this source gives, (K, p, D); K = 1 here."""
        return self.prompt.to(dtype).unsqueeze(0)  # (1, p, D)

    def row_index(self, prompt_index: torch.Tensor | None, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  table: nn.Module) -> None:
        """Which row of `prompt_table` each input row takes: None, all take row 0."""
        if prompt_index is not None:
            raise SoftPromptError("prompt_index: this model has one prompt for every row; pass no prompt_index "
                                  "(it selects among the prompts of a bank, prompt.type: bank)")
        return None

    def version(self) -> tuple:
        """Changes whenever the prompt rows may have changed (in-place updates bump `_version`; `.to()` moves
        the storage), so a cache of the prompt's keys/values knows when to recompute."""
        return (self.prompt._version, self.prompt.data_ptr())

    @property
    def offsets_tokens(self) -> bool:
        return self.offset is not None

    def generation_offset(self, token_mask: torch.Tensor, index: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(rows (s, D), index (B, T)) to add to the tokens `generate` produces, given which columns of the
        growing sequence are real tokens after the prompt; None when nothing is added. `index`, the rows'
        prompt numbers, is for per-row sources (one prompt here)."""
        if self.offset is None or not hasattr(self.offset, "generation_index"):
            return None
        index = self.offset.generation_index(token_mask)
        return None if index is None else (self.offset.rows(), index)

    def param_groups(self, lr: float, weight_decay: float, offset_lr: float | None = None,
                     offset_weight_decay: float | None = None) -> list[dict]:
        """Optimizer groups: the prompt, and the offset's parameters at their own rate (DePT's two LRs)."""
        return prompt_groups(self.prompt, self.offset, lr, weight_decay, offset_lr, offset_weight_decay)

    # -- the adapter's views -----------------------------------------------------------------------

    def describe(self) -> dict:
        """What an adapter records to rebuild this source (`restore`); `type` names the registry entry."""
        return {"type": "plain" if self.offset is None else self.offset.describe()["type"],
                "num_virtual_tokens": self.num_virtual_tokens, "dim": self.dim,
                "offset": self.offset.describe() if self.offset is not None else None}

    def peft_view(self) -> tuple[str | None, str | None]:
        """(which tensor of `state_dict()` is PEFT PROMPT_TUNING's `prompt_embeddings` (p, D), or None when
        PEFT cannot hold this source; what a PEFT load would miss, or None)."""
        if self.offset is None:
            return "prompt", None
        return "prompt", (f"PEFT has no type for a token offset ({self.offset.describe()['type']}); "
                          "peft.PeftModel.from_pretrained would load the prompt alone and give other outputs")

    def serving_view(self, dtype: torch.dtype) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        """Files ({file name: {tensor name: tensor}}) and metadata for engines that take prompt embeddings
        (vLLM `prompt_embeds`), in the base's dtype."""
        files = {"soft_prompt.safetensors": {"prompt_embeds": self.prompt.detach().to(dtype).cpu().contiguous()}}  # (p, D)
        meta = {"num_virtual_tokens": self.num_virtual_tokens, "token_offset": self.offset is not None,
                "recipe": "ids = tokenizer(text); x = cat([prompt_embeds, embed(ids)]); send x as prompt_embeds"}
        if self.offset is not None:  # e.g. DePT: row index[i] of these rows is added to token i's embedding
            with torch.no_grad():
                rows = self.offset.rows().detach().to(dtype).cpu().contiguous()  # (s, D)
            files["token_offset.safetensors"] = {"rows": rows}
            meta["token_offset_spec"] = self.offset.describe()
            meta["recipe"] = ("ids = tokenizer(text); e = embed(ids); e[j] += rows[j] for the j-th token, j < s "
                              "(DePT with fixed_length and padding_side left: rows[s - n + j], n tokens); "
                              "x = cat([prompt_embeds, e]); send x as prompt_embeds")
        return files, meta

    def token_embeds(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, table: nn.Module, index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token embeddings (B, L, D), with the offset where there is one (`index`: per-row sources only)."""
        if fused.enabled(self.kernel, table, self.prompt.device):
            rows, index = self._offset_parts(attention_mask)
            return fused.token_embeds(table.weight, input_ids, rows, index)  # (B, L, D)
        embeds = table(input_ids)  # (B, L, D)
        if self.offset is not None:
            embeds = apply_offset(embeds, self.offset.rows(), self.offset.index(attention_mask))
        return embeds

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, table: nn.Module,
        prompt_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenation path: returns `[prompt; tokens]` (B, p+L, D) and its mask (B, p+L)."""
        batch = input_ids.shape[0]
        self.row_index(prompt_index, input_ids, attention_mask, table)
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
