"""DePT's low-rank token offset: Shi & Lipani, "DePT: Decomposed Prompt Tuning for Parameter-Efficient
Fine-tuning", ICLR 2024, https://arxiv.org/abs/2309.05173 (code: github.com/ZhengxiangShi/DePT).

`rows() = gamma * A @ B` is an (s, d) matrix; row i is added to the embedding of the i-th token of each
input. A (s x r) is Kaiming-uniform (a = sqrt(5), i.e. U(-1/sqrt(r), 1/sqrt(r))), B (r x d) is zero, so
a fresh offset is exactly zero and DePT starts as plain prompt tuning.

Scaling: gamma = alpha / sqrt(r) with alpha = 8 (the official `lora_alpha` default, never overridden in
the released runs: r=30 gives 1.461). This is NOT LoRA's alpha / r; porting to alpha / r changes the
effective learning rate of A and B (research/methods.md §2.2, §2.6).

Which row a token takes (`index`):
- default: row i goes to the i-th *real* token of the row (from the mask's cumsum), so right, left and
  dynamic padding all give a token the same row, and padding takes none.
- `fixed_length=True` reproduces the official code, which pads every input to exactly s tokens and adds
  row i to slot i, padding slots included. With `padding_side="right"` (the official T5 path) the i-th
  real token sits in slot i, which is the default rule. With `padding_side="left"` (the official
  decoder-only path) a row of n real tokens starts at slot s - n, so its j-th real token takes row
  s - n + j. Padding slots get no row here: padding is masked out of attention, so what is added to it
  never reaches a real position (tests/test_dept.py checks this against the padded-to-s formula).
  On a causal model n counts the whole row: in training the source *and* target, in generation the
  source alone, so a source token's row shifts by the target length between the two, as in the
  official decoder path (faithful, not a fix; the default rule has no such shift).

Overflow (a row with more than s real tokens; the official code truncates its inputs to s):
- "error": raise, naming the fixes (the DePT method also checks data.max_length <= s up front);
- "truncate": the *offset* is truncated: tokens past the s-th real token take no row (a warning is
  logged once per module). The input itself is not cut; cut inputs with data.max_length.
The check costs a host sync only when a batch is wider than s.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from softprompt.errors import ConfigError, SoftPromptError
from softprompt.layers.inits import initial_prompt
from softprompt.layers.plain import PromptConfig
from softprompt.layers.prompt_embedding import PromptEmbedding

log = logging.getLogger(__name__)

OVERFLOW = ("error", "truncate")
PADDING_SIDES = ("right", "left")


@dataclass(frozen=True)
class DeptConfig(PromptConfig):
    """`prompt.type: dept`. Here m is `num_virtual_tokens`; the prompt's LR / weight decay are `optim.lr` /
    `optim.weight_decay`, A and B's are `offset_lr` / `offset_weight_decay` under the same schedule."""

    type: str = "dept"
    rank: int = 30  # r; the released GLUE/SuperGLUE runs use 30 with m = 60 (76,800 params at s=256, d=768)
    max_length: int = 256  # s: rows of A, i.e. how many input tokens get an offset (the official max source length)
    alpha: float = 8.0  # gamma = alpha / sqrt(r) (official lora_alpha = 8); NOT LoRA's alpha / r
    offset_lr: float = 1e-4  # A and B's learning rate; the paper sweeps 1e-4 .. 5e-3 with prompt LR 0.3
    offset_weight_decay: float = 0.0  # the official optimizer applies none (its CLI weight decay is unused)
    # True: the official indexing, as if every row were padded to exactly s (right for seq2seq, left for
    # causal models, as in the official T5 and decoder-only paths). False: row i to the i-th real token.
    fixed_length: bool = False
    overflow: str = "error"  # rows over s tokens: error | truncate (tokens past s get no offset)

    def __post_init__(self):
        super().__post_init__()
        for key in ("rank", "max_length"):
            if getattr(self, key) < 1:
                raise ConfigError(f"prompt.{key}: must be >= 1, got {getattr(self, key)}"
                                  + (" (rank 0 is plain prompt tuning: use prompt.type plain)" if key == "rank" else ""))
        if self.alpha <= 0:
            raise ConfigError(f"prompt.alpha: must be > 0, got {self.alpha}")
        if self.offset_lr < 0 or self.offset_weight_decay < 0:
            raise ConfigError("prompt.offset_lr and prompt.offset_weight_decay: must be >= 0")
        if self.overflow not in OVERFLOW:
            raise ConfigError(f"prompt.overflow: {self.overflow!r} is not valid; choose one of {list(OVERFLOW)}")


def build(cfg: DeptConfig, table: torch.Tensor, tokenizer, kind: str, seed: int) -> PromptEmbedding:
    """A DePT prompt: m prompt rows plus an offset sized to the base; the official padding side per kind."""
    generator = torch.Generator().manual_seed(cfg.seed if cfg.seed is not None else seed)
    offset = DeptOffset(cfg.max_length, cfg.rank, table.shape[1], alpha=cfg.alpha, fixed_length=cfg.fixed_length,
                        padding_side="left" if kind == "causal" else "right", overflow=cfg.overflow,
                        generator=generator)
    return PromptEmbedding(initial_prompt(cfg, table, tokenizer, seed), offset=offset, kernel=cfg.kernel)


def param_groups(source: PromptEmbedding, cfg: DeptConfig, optim) -> list[dict]:
    """The prompt at optim.lr, A and B at their own rate (DePT's two learning rates)."""
    return source.param_groups(optim.lr, optim.weight_decay, cfg.offset_lr, cfg.offset_weight_decay)


def restore(description: dict, state: dict[str, torch.Tensor]) -> PromptEmbedding:
    """Rebuild from `describe()` and `state_dict()` as an adapter saved them."""
    spec = {k: v for k, v in description["offset"].items() if k != "type"}
    offset = DeptOffset(**spec)
    offset.load_state_dict({k.removeprefix("offset."): v for k, v in state.items() if k.startswith("offset.")})
    return PromptEmbedding(state["prompt"], offset=offset)


def check(cfg: DeptConfig, full) -> None:
    """With overflow=error, every row the data pipeline makes must fit the offset (fail before loading). Rows
    are data.max_length tokens at most, or exactly objective.block_size where the objective cuts blocks."""
    block = getattr(full.objective, "block_size", None)
    key, length = ("objective.block_size", block) if block is not None else ("data.max_length", full.data.max_length)
    if cfg.overflow == "error" and length > cfg.max_length:
        fix = "(inputs are cut per data.truncation, as the official code cuts to s)" if block is None else "(every block is that long)"
        raise ConfigError(
            f"prompt.max_length: DePT's offset covers s={cfg.max_length} tokens but {key}={length} makes longer "
            f"rows; set {key} <= {cfg.max_length} {fix}, raise prompt.max_length, or set prompt.overflow=truncate"
        )


class DeptOffset(nn.Module):
    """gamma * A @ B added to the embeddings of the first s tokens of each row (a `TokenOffset`)."""

    def __init__(self, length: int, rank: int, dim: int, alpha: float = 8.0, fixed_length: bool = False,
                 padding_side: str = "right", overflow: str = "error", generator: torch.Generator | None = None):
        super().__init__()
        if length < 1 or rank < 1 or dim < 1:
            raise SoftPromptError(f"DePT offset: length s, rank r and dim must be >= 1, got s={length}, r={rank}, d={dim} "
                                  "(r = 0 is plain prompt tuning: use prompt.type plain)")
        if overflow not in OVERFLOW:
            raise SoftPromptError(f"DePT offset: overflow {overflow!r} is not one of {list(OVERFLOW)}")
        if padding_side not in PADDING_SIDES:
            raise SoftPromptError(f"DePT offset: padding_side {padding_side!r} is not one of {list(PADDING_SIDES)}")
        self.length, self.rank, self.dim, self.alpha = length, rank, dim, float(alpha)
        self.fixed_length, self.padding_side, self.overflow = fixed_length, padding_side, overflow
        self.scaling = self.alpha / math.sqrt(rank)  # alpha / sqrt(r), not LoRA's alpha / r (see module doc)
        self.A = nn.Parameter(torch.empty(length, rank))  # (s, r) fp32
        self.B = nn.Parameter(torch.zeros(rank, dim))  # (r, d) fp32; zero: the offset starts at exactly 0
        # fan_in of an (s, r) tensor is r: A ~ U(-1/sqrt(r), 1/sqrt(r)), as nn.Linear and the official code.
        # A generator keeps the global RNG (dropout, data order) untouched, so B = 0 equals prompt tuning bitwise.
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5), generator=generator)
        self._warned = False

    def rows(self) -> torch.Tensor:
        return self.scaling * (self.A @ self.B)  # (s, r) @ (r, d) -> (s, d) fp32

    def index(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) long: the row each token takes, -1 for none (padding, or past s under truncate)."""
        mask = attention_mask.long()  # (B, L)
        real = mask.cumsum(1) - 1  # (B, L): j for the j-th real token of its row
        if self.fixed_length and self.padding_side == "left":
            n = mask.sum(1, keepdim=True)  # (B, 1) real tokens per row
            real = real + (self.length - n).clamp(min=0)  # as if left-padded to s: slot s - n + j
        index = torch.where(mask.bool(), real, -1)  # (B, L)
        if attention_mask.shape[1] > self.length:  # only then can a row exceed s (one host sync)
            over = index >= self.length  # (B, L)
            if bool(over.any()):
                self._overflow(int(mask.sum(1).max()))
                index = index.masked_fill(over, -1)
        return index

    def generation_index(self, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """`index` for a sequence that `generate` is extending (mask: source columns then one column per
        generated token). Generated tokens take rows as training gives target tokens: the default rule
        counts real tokens, so a cached decode can add each new token's row as it comes. Tokens past s
        take none (a generation cannot be refused halfway). None for the official causal fixed-length
        rule: there a row's slots depend on its final length (s - n + j), which a cached decode cannot
        know, and the official code offsets the source alone in generation, as we then do."""
        if self.fixed_length and self.padding_side == "left":
            return None
        mask = attention_mask.long()
        real = mask.cumsum(1) - 1  # (B, T)
        return torch.where(mask.bool() & (real < self.length), real, -1)

    def _overflow(self, longest: int) -> None:
        if self.overflow == "error":
            raise SoftPromptError(
                f"DePT: an input has {longest} tokens but the offset covers s={self.length}; shorten inputs "
                f"(data.max_length <= {self.length}), raise prompt.max_length, or set prompt.overflow=truncate "
                "to leave tokens past s without offset"
            )
        if not self._warned:
            self._warned = True
            log.warning("DePT: an input has %d tokens; tokens past s=%d get no offset (prompt.overflow=truncate)",
                        longest, self.length)

    def describe(self) -> dict:
        return {"type": "dept", "length": self.length, "rank": self.rank, "dim": self.dim, "alpha": self.alpha,
                "fixed_length": self.fixed_length, "padding_side": self.padding_side, "overflow": self.overflow}

    def extra_repr(self) -> str:
        return f"s={self.length}, r={self.rank}, d={self.dim}, scaling={self.scaling:.4f}"
