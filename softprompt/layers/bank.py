"""A bank of prompts with one chosen per row: the per-row prompt source behind dynamic prompting
(IDP: Hoang et al. 2023, "(Dynamic) Prompting might be all you need to repair Compressed LLMs",
https://arxiv.org/abs/2310.00867) and any method that keeps a prompt per task, domain or cluster.

The bank holds K prompts (K, p, d). Row b of a batch takes prompt `prompt_index[b]`, which the caller
passes, or which the model's selector (selectors/) computes from the row; the bank never guesses one.
Every prompt is initialised like a plain prompt, each with its own draw, so the bank does not start
symmetric.

Entries are plain prompts, or DePT prompts (`entry: dept`): each member then has its own low-rank token
offset (layers/dept.py), and a row's tokens take its own member's offset. The K offsets' rows are laid
end to end, (K·s, D), so row b's token i takes row k_b·s + i: the one `apply_offset` (and fused kernel)
the single DePT prompt uses, in training, evaluation and generation alike.

Execution: concatenation gathers each row's prompt. The shared-prefix path runs the K prompts once
(batch K) and hands each row its own prompt's keys/values (`shared_prefix.broadcast_cache`), so the
work per step is K·p + B·L token passes instead of B·(p + L). The fused kernel writes one prompt for
every row, so here it writes the tokens only and the prompts are gathered in torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from softprompt.errors import ConfigError, SoftPromptError
from softprompt.layers import dept, fused
from softprompt.layers.inits import initial_prompt
from softprompt.layers.prompt_embedding import apply_offset, prompt_groups

ENTRIES = ("plain", "dept")


@dataclass(frozen=True)
class BankConfig(dept.DeptConfig):
    """`prompt.type: bank`: `num_prompts` prompts of `num_virtual_tokens` rows, one per row of a batch. With
    `entry: dept` each also has a DePT offset, set by the DePT fields (rank, max_length, alpha, offset_lr, ...),
    which a bank of plain entries ignores."""

    type: str = "bank"
    num_prompts: int = 4
    entry: str = "plain"  # plain | dept: what each member of the bank is

    def __post_init__(self):
        super().__post_init__()
        if self.entry not in ENTRIES:
            raise ConfigError(f"prompt.entry: {self.entry!r} is not valid; choose one of {list(ENTRIES)}")
        if self.num_prompts < 1:
            raise ConfigError(f"prompt.num_prompts: must be >= 1, got {self.num_prompts}")
        if self.init in ("file", "text"):  # one prompt's worth, or K identical prompts: no distinct start
            raise ConfigError(f"prompt.init: {self.init!r} gives one prompt, and a bank needs {self.num_prompts} distinct "
                              "ones; start it from vocab, uniform or class_label (or load a saved bank with "
                              "SoftPromptModel.from_adapter)")


class PromptBank(nn.Module):
    row_invariant = False  # row b takes prompt prompt_index[b]
    prompts_from_table = True  # row b's prompt is prompt_table()[index[b]]: the shared prefix serves it

    def __init__(self, prompts_init: torch.Tensor, kernel: str = "auto", offsets: list[nn.Module] | None = None):
        super().__init__()
        if prompts_init.dim() != 3:
            raise SoftPromptError(f"prompt bank: expected a (K, p, d) tensor of prompts, got shape {tuple(prompts_init.shape)}")
        if offsets is not None and len(offsets) != prompts_init.shape[0]:
            raise SoftPromptError(f"prompt bank: {len(offsets)} token offsets for {prompts_init.shape[0]} prompts; give one each")
        self.prompts = nn.Parameter(prompts_init.detach().float().clone())  # (K, p, D) fp32 master copy
        self.offsets = nn.ModuleList(offsets) if offsets is not None else None  # DePT entries: one offset each
        self.kernel = kernel

    @property
    def num_prompts(self) -> int:
        return self.prompts.shape[0]

    @property
    def num_virtual_tokens(self) -> int:
        return self.prompts.shape[1]

    @property
    def dim(self) -> int:
        return self.prompts.shape[2]

    def prompt_table(self, dtype: torch.dtype) -> torch.Tensor:
        return self.prompts.to(dtype)  # (K, p, D)

    def row_index(self, prompt_index: torch.Tensor | None, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  table: nn.Module) -> torch.Tensor:
        """Each row's bank entry (B,): the caller's `prompt_index`, or the model's selector's (selectors/)."""
        batch = input_ids.shape[0]
        if prompt_index is None:
            raise SoftPromptError(f"prompt_index: this model has a bank of {self.num_prompts} prompts and each row needs "
                                  "one; pass prompt_index, a (batch,) tensor of prompt numbers in [0, num_prompts)")
        prompt_index = torch.as_tensor(prompt_index).reshape(-1)
        if prompt_index.dtype.is_floating_point or prompt_index.dtype == torch.bool:
            raise SoftPromptError(f"prompt_index: got {prompt_index.dtype} values; give integer prompt numbers in "
                                  f"[0, {self.num_prompts})")
        if prompt_index.shape[0] != batch:
            raise SoftPromptError(f"prompt_index: {prompt_index.shape[0]} entries for a batch of {batch} rows; give one per row")
        # one host sync: an index out of range would be a raw IndexError, or on concatenation a silent wrap of -1
        low, high = int(prompt_index.min()), int(prompt_index.max())
        if low < 0 or high >= self.num_prompts:
            raise SoftPromptError(f"prompt_index: {low if low < 0 else high} is not a prompt of this bank; give numbers "
                                  f"in [0, {self.num_prompts})")
        return prompt_index.to(self.prompts.device).long()  # (B,)

    def version(self) -> tuple:
        return (self.prompts._version, self.prompts.data_ptr())

    @property
    def offsets_tokens(self) -> bool:
        return self.offsets is not None

    def offset_rows(self, position: torch.Tensor, index: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """All members' offset rows end to end (K·s, D) and, for tokens at offset `position` (B, T; -1: none)
        of rows taking prompts `index` (B',), the flat row each takes. `generate` runs B = B'·n sequences
        (beams, returned sequences), row by row, so the index repeats in place."""
        if index is None:
            raise SoftPromptError("prompt bank: its DePT entries offset each row's tokens by that row's own prompt; "
                                  "pass prompt_index (or give the model a selector)")
        index = index.repeat_interleave(position.shape[0] // index.shape[0]).to(position.device)  # (B,)
        s = self.offsets[0].length
        rows = torch.cat([o.rows() for o in self.offsets])  # (K·s, D): member k's rows at k·s .. k·s + s - 1
        return rows, torch.where(position >= 0, index[:, None] * s + position, -1)  # (B, T)

    def generation_offset(self, token_mask: torch.Tensor, index: torch.Tensor | None = None):
        if self.offsets is None:
            return None
        position = self.offsets[0].generation_index(token_mask)  # every member counts tokens the same way
        return None if position is None else self.offset_rows(position, index)

    def token_embeds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, table: nn.Module,
                     index: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings (B, L, D); with DePT entries, each row's plus its own prompt's offset (`index`)."""
        rows = flat = None
        if self.offsets is not None:
            rows, flat = self.offset_rows(self.offsets[0].index(attention_mask), index)  # (K·s, D), (B, L)
        if fused.enabled(self.kernel, table, self.prompts.device):
            return fused.token_embeds(table.weight, input_ids, rows, flat)  # (B, L, D)
        embeds = table(input_ids)  # (B, L, D)
        return embeds if rows is None else apply_offset(embeds, rows, flat)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, table: nn.Module,
                prompt_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenation path: `[prompts[prompt_index[b]]; tokens[b]]` (B, p+L, D) and its mask (B, p+L)."""
        batch = input_ids.shape[0]
        index = self.row_index(prompt_index, input_ids, attention_mask, table)
        tokens = self.token_embeds(input_ids, attention_mask, table, index)  # (B, L, D)
        prompts = self.prompts.to(tokens.dtype)[index]  # (B, p, D)
        embeds = torch.cat([prompts, tokens], dim=1)  # (B, p+L, D)
        mask = torch.cat([attention_mask.new_ones(batch, self.num_virtual_tokens), attention_mask], dim=1)  # (B, p+L)
        return embeds, mask

    def param_groups(self, lr: float, weight_decay: float, offset_lr: float | None = None,
                     offset_weight_decay: float | None = None) -> list[dict]:
        """The prompts, and DePT entries' offsets at their own rate (DePT's two learning rates)."""
        return prompt_groups(self.prompts, self.offsets, lr, weight_decay, offset_lr, offset_weight_decay)

    def describe(self) -> dict:
        return {"type": "bank", "num_prompts": self.num_prompts, "num_virtual_tokens": self.num_virtual_tokens,
                "dim": self.dim, "entry": "dept" if self.offsets is not None else "plain",
                "offset": self.offsets[0].describe() if self.offsets is not None else None}

    def peft_view(self) -> tuple[None, str]:
        """PEFT cannot hold a bank: no PEFT tensor at the top, and why (plain members get PEFT dirs of their own)."""
        if self.offsets is not None:
            return None, (f"PEFT's prompt tuning holds one prompt and no token offset, and a bank holds {self.num_prompts} "
                          "DePT prompts chosen per row")
        return None, (f"PEFT's prompt tuning holds one prompt and a bank holds {self.num_prompts}, chosen per row; "
                      f"members/prompt_00..{self.num_prompts - 1:02d}/ are PEFT adapters of the members, each a fixed prompt "
                      "for every row")

    def peft_members(self) -> torch.Tensor | None:
        """Each prompt as PEFT would hold it alone, (K, p, D) fp32; None where PEFT would miss a member's offset."""
        return self.prompts.detach().float().cpu() if self.offsets is None else None

    def serving_view(self, dtype: torch.dtype) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        files = {"prompt_bank.safetensors": {"prompt_embeds": self.prompts.detach().to(dtype).cpu().contiguous()}}  # (K, p, D)
        meta = {"num_virtual_tokens": self.num_virtual_tokens, "num_prompts": self.num_prompts, "token_offset": False,
                "recipe": "ids = tokenizer(text); k = the row's prompt number; "
                          "x = cat([prompt_embeds[k], embed(ids)]); send x as prompt_embeds"}
        if self.offsets is not None:  # DePT entries: member k's rows are added to its rows' tokens
            with torch.no_grad():
                rows = torch.stack([o.rows() for o in self.offsets]).detach().to(dtype).cpu().contiguous()  # (K, s, D)
            files["token_offset.safetensors"] = {"rows": rows}
            meta.update(token_offset=True, token_offset_spec=self.offsets[0].describe(),
                        recipe="ids = tokenizer(text); k = the row's prompt number; e = embed(ids); e[j] += rows[k, j] "
                               "for the j-th token, j < s; x = cat([prompt_embeds[k], e]); send x as prompt_embeds")
        return files, meta


def build(cfg: BankConfig, table: torch.Tensor, tokenizer, kind: str, seed: int) -> PromptBank:
    generator = torch.Generator().manual_seed(cfg.seed if cfg.seed is not None else seed)
    prompts = [initial_prompt(cfg, table, tokenizer, seed, generator) for _ in range(cfg.num_prompts)]
    offsets = None
    if cfg.entry == "dept":  # drawn after the prompts, so a plain bank's prompts are the same draws
        offsets = [dept.DeptOffset(cfg.max_length, cfg.rank, table.shape[1], alpha=cfg.alpha, fixed_length=cfg.fixed_length,
                                   padding_side="left" if kind == "causal" else "right", overflow=cfg.overflow,
                                   generator=generator) for _ in range(cfg.num_prompts)]
    return PromptBank(torch.stack(prompts), kernel=cfg.kernel, offsets=offsets)  # (K, p, D)


def check(cfg: BankConfig, full) -> None:
    """A bank in a recipe needs a selector to give each row its prompt (no data column carries one): refuse
    the recipe before anything loads or is written."""
    if cfg.entry == "dept":
        dept.check(cfg, full)
    if full.selector is None:
        raise ConfigError("prompt.type: bank needs each row's prompt number; add a selector section (selector.type: "
                          "attention, key or oracle), or use method: idp; from the library, pass prompt_index to "
                          "SoftPromptModel(base, PromptBank(prompts))(...)")


def param_groups(source: PromptBank, cfg: BankConfig, optim) -> list[dict]:
    return source.param_groups(optim.lr, optim.weight_decay, cfg.offset_lr, cfg.offset_weight_decay)


def restore(description: dict, state: dict[str, torch.Tensor]) -> PromptBank:
    """Rebuild from `describe()` and `state_dict()` as an adapter saved them."""
    offsets = None
    if description.get("entry") == "dept":
        spec = {k: v for k, v in description["offset"].items() if k != "type"}
        offsets = [dept.DeptOffset(**spec) for _ in range(state["prompts"].shape[0])]
    bank = PromptBank(state["prompts"], offsets=offsets)
    bank.load_state_dict(state)  # strict: a missing or extra offset tensor is an error
    return bank
