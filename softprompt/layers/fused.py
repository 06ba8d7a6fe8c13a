"""The fused prompt-embedding kernel (Triton): token gather + token offset + prompt write, one pass.

The torch path in `PromptEmbedding` is the specification; this computes the same thing in one kernel
launch per direction:

    out[b, t]     = prompt[t]                                              t < p   (concat variant)
    out[b, p + l] = table[ids[b, l]] + (rows[index[b, l]] if index[b, l] >= 0)      (both variants)

with the same casts as the reference (`prompt.to(dtype)`, `rows.to(dtype)`, the add rounded once in
the table's dtype). The tokens-only variant (p = 0) feeds the shared-prefix path. The backward writes
only the trainable tensors: the prompt gradient is a per-row sum over the batch (fixed order, so
deterministic), the offset rows' gradient a scatter-add by `index` (atomics: on GPU the summation
order, and so the last bits, can vary between runs); the frozen table gets nothing. Both accumulate
in fp32 (fp64 for fp64 inputs).

`enabled` is the one place the path is chosen (`PromptConfig.kernel`): "auto" takes Triton when it is
importable and the tensors are on a CUDA device; "triton" forces it, which on CPU works only under
Triton's interpreter (`TRITON_INTERPRET=1`, how the parity tests run; research/env_probe.md §6).
The kernels are built at first use, so the interpreter switch may be set any time before that.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os

import torch
from torch import nn

from softprompt.errors import SoftPromptError

log = logging.getLogger(__name__)

KERNELS = ("auto", "torch", "triton")


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def fusable(table: nn.Module) -> str | None:
    """Why the table cannot be read as a plain row gather (None: it can)."""
    if not isinstance(table, nn.Embedding) or type(table).forward is not nn.Embedding.forward:
        return f"{type(table).__name__} is not a plain nn.Embedding (its forward may scale or transform rows)"
    if table.max_norm is not None:
        return "the embedding renormalises rows (max_norm)"
    if table.weight.requires_grad:
        return "the embedding table is trainable (the kernel treats it as frozen and gives it no gradient)"
    return None


@functools.cache
def _log_once(message: str) -> None:
    log.info(message)


def enabled(kernel: str, table: nn.Module, device: torch.device) -> bool:
    """True: use the Triton kernel for this call. The one place the choice is made."""
    if kernel not in KERNELS:
        raise SoftPromptError(f"prompt.kernel: {kernel!r} is not one of {list(KERNELS)}")
    if kernel == "torch":
        return False
    if kernel == "auto":
        if not (triton_available() and device.type == "cuda"):
            return False
        reason = fusable(table)
        if reason is not None:
            _log_once(f"fused prompt-embedding kernel off, using torch: {reason}")
        return reason is None
    if not triton_available():
        raise SoftPromptError("prompt.kernel: triton is not installed (pip install 'softprompt[triton]'); "
                              "use kernel: auto or torch")
    if device.type != "cuda" and not interpreting():
        raise SoftPromptError(f"prompt.kernel: triton needs a CUDA device (tensors are on {device.type}); "
                              "on CPU only Triton's interpreter runs it (TRITON_INTERPRET=1, slow: tests only)")
    reason = fusable(table)
    if reason is not None:
        raise SoftPromptError(f"prompt.kernel: triton cannot run here: {reason}; use kernel: auto or torch")
    return True


# ---------------------------------------------------------------------------------------------------
# Public entry points (autograd-aware)


def concat_embeds(prompt: torch.Tensor, weight: torch.Tensor, input_ids: torch.Tensor,
                  rows: torch.Tensor | None = None, index: torch.Tensor | None = None) -> torch.Tensor:
    """`[prompt; table[ids] + offset]` as (B, p+L, D) in the table's dtype."""
    return _PromptEmbed.apply(prompt, rows, weight, input_ids, index)


def token_embeds(weight: torch.Tensor, input_ids: torch.Tensor, rows: torch.Tensor | None = None,
                 index: torch.Tensor | None = None) -> torch.Tensor:
    """`table[ids] + offset` as (B, L, D) in the table's dtype (the shared-prefix variant)."""
    return _PromptEmbed.apply(None, rows, weight, input_ids, index)


class _PromptEmbed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, prompt, rows, weight, input_ids, index):
        kernels = _kernels()
        batch, length = input_ids.shape
        p = 0 if prompt is None else prompt.shape[0]
        dim = weight.shape[1]
        ids = input_ids.contiguous()
        has_offset = rows is not None
        if has_offset:
            index = index.to(device=ids.device, dtype=torch.int64).contiguous()  # (B, L), -1: none
        out = torch.empty(batch, p + length, dim, dtype=weight.dtype, device=weight.device)  # (B, p+L, D)
        block = _block(dim)
        kernels.forward[(batch * (p + length),)](
            out, ids, weight.contiguous(),
            prompt.contiguous() if p else weight,  # unused pointers get any valid tensor
            rows.contiguous() if has_offset else weight,
            index if has_offset else ids,
            p, length, dim, HAS_OFFSET=has_offset, ACC=_acc(weight.dtype),
            ROUND_BF16=weight.dtype == torch.bfloat16, BLOCK_D=block,
        )
        ctx.save_for_backward(index if has_offset else None)
        ctx.meta = (batch, length, p, dim, None if prompt is None else prompt.dtype,
                    None if rows is None else (rows.shape[0], rows.dtype))
        return out

    @staticmethod
    def backward(ctx, grad_out):
        kernels = _kernels()
        (index,) = ctx.saved_tensors
        batch, length, p, dim, prompt_dtype, rows_meta = ctx.meta
        need_prompt = p > 0 and ctx.needs_input_grad[0]
        need_rows = rows_meta is not None and ctx.needs_input_grad[1]
        if not (need_prompt or need_rows):
            return None, None, None, None, None
        grad_out = grad_out.contiguous()  # (B, p+L, D)
        acc = torch.float64 if grad_out.dtype == torch.float64 else torch.float32
        grad_prompt = torch.empty(p, dim, dtype=acc, device=grad_out.device) if need_prompt else grad_out
        grad_rows = torch.zeros(rows_meta[0], dim, dtype=acc, device=grad_out.device) if need_rows else grad_out
        programs = (p if need_prompt else 0) + (batch * length if need_rows else 0)
        kernels.backward[(programs,)](
            grad_out, grad_prompt, grad_rows, index if need_rows else grad_out,
            batch, p, length, dim, p if need_prompt else 0,
            NEED_PROMPT=need_prompt, NEED_ROWS=need_rows, BLOCK_D=_block(dim),
        )
        return (grad_prompt.to(prompt_dtype) if need_prompt else None,
                grad_rows.to(rows_meta[1]) if need_rows else None, None, None, None)


def _acc(dtype: torch.dtype):
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def _block(dim: int) -> int:
    return min(1 << (dim - 1).bit_length(), 1024)  # a power of two; wider rows loop


# ---------------------------------------------------------------------------------------------------


@functools.cache
def _kernels():
    """The Triton kernels (layers/fused_triton.py), imported at first use: Triton reads
    TRITON_INTERPRET when it decorates a kernel, so the switch may be set any time before this."""
    from softprompt.layers import fused_triton

    return fused_triton
