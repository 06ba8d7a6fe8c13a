"""Triton source of the fused prompt-embedding kernel; the autograd wrapper, the path choice and the
reference semantics are in layers/fused.py. Imported only when that path runs.

Only `tl` builtins are used, no helpers from `triton.language.standard` (`tl.zeros`, `tl.sum`, ...):
those are jitted when triton is imported, so under `TRITON_INTERPRET=1` set after that import they
would not be interpreted. Our kernels are decorated at this module's import, which comes later.
"""

import triton
import triton.language as tl


@triton.jit
def _cast(x, OUT: tl.constexpr, ROUND_BF16: tl.constexpr):
    # fp32 -> OUT, rounding to nearest even as torch does. For bf16 by hand: Triton's interpreter
    # truncates that cast (compiled Triton rounds), and the CPU parity tests run the interpreter.
    if ROUND_BF16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(OUT)


@triton.jit
def forward(out_ptr, ids_ptr, table_ptr, prompt_ptr, rows_ptr, index_ptr, P, L, D,
            HAS_OFFSET: tl.constexpr, ACC: tl.constexpr, ROUND_BF16: tl.constexpr, BLOCK_D: tl.constexpr):
    # One program per output row r = b*(P+L) + t of the (B, P+L, D) output.
    r = tl.program_id(0).to(tl.int64)
    b = r // (P + L)
    t = r % (P + L)
    out_dtype = out_ptr.dtype.element_ty
    cols = tl.arange(0, BLOCK_D)
    if t < P:  # a prompt row: prompt.to(dtype)
        for d0 in range(0, D, BLOCK_D):
            c = d0 + cols
            x = tl.load(prompt_ptr + t * D + c, mask=c < D)
            tl.store(out_ptr + r * D + c, _cast(x, out_dtype, ROUND_BF16), mask=c < D)
    else:  # a token row: table[id] (+ rows[k].to(dtype), one rounding, as embeds + delta)
        j = b * L + (t - P)
        token = tl.load(ids_ptr + j).to(tl.int64)
        if HAS_OFFSET:
            k = tl.load(index_ptr + j).to(tl.int64)
            row = tl.maximum(k, 0)
            has_row = (tl.full([BLOCK_D], 0, tl.int64) + k) >= 0  # the scalar test as a lane mask
            for d0 in range(0, D, BLOCK_D):
                c = d0 + cols
                x = tl.load(table_ptr + token * D + c, mask=c < D)
                delta = tl.load(rows_ptr + row * D + c, mask=(c < D) & has_row, other=0.0)
                delta = _cast(delta, out_dtype, ROUND_BF16)
                x = _cast(x.to(ACC) + delta.to(ACC), out_dtype, ROUND_BF16)  # + 0 where k < 0: exact
                tl.store(out_ptr + r * D + c, x, mask=c < D)
        else:
            for d0 in range(0, D, BLOCK_D):
                c = d0 + cols
                x = tl.load(table_ptr + token * D + c, mask=c < D)
                tl.store(out_ptr + r * D + c, x, mask=c < D)


@triton.jit
def backward(grad_ptr, grad_prompt_ptr, grad_rows_ptr, index_ptr, B, P, L, D, FIRST_TOKEN,
             NEED_PROMPT: tl.constexpr, NEED_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    # Programs [0, P): prompt row t, summed over the batch in order. Then one per token (b, l)
    # whose index k >= 0: atomically added to offset row k. The table gets no gradient.
    r = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    if NEED_PROMPT:
        if r < P:
            acc_dtype = grad_prompt_ptr.dtype.element_ty
            for d0 in range(0, D, BLOCK_D):
                c = d0 + cols
                acc = tl.full([BLOCK_D], 0, acc_dtype)
                for b in range(0, B):
                    acc += tl.load(grad_ptr + (b * (P + L) + r) * D + c, mask=c < D).to(acc_dtype)
                tl.store(grad_prompt_ptr + r * D + c, acc, mask=c < D)
    if NEED_ROWS:
        if r >= FIRST_TOKEN:
            j = r - FIRST_TOKEN  # b * L + l
            k = tl.load(index_ptr + j).to(tl.int64)
            target = tl.maximum(k, 0)
            has_row = (tl.full([BLOCK_D], 0, tl.int64) + k) >= 0
            row = (j // L) * (P + L) + P + j % L
            for d0 in range(0, D, BLOCK_D):
                c = d0 + cols
                g = tl.load(grad_ptr + row * D + c, mask=c < D).to(grad_rows_ptr.dtype.element_ty)
                tl.atomic_add(grad_rows_ptr + target * D + c, g, mask=(c < D) & has_row)
