"""The fused prompt-embedding kernel equals the torch path, forward and backward.

Runs on CPU through Triton's interpreter (TRITON_INTERPRET=1, research/env_probe.md §6); the kernels
are built at first use, so setting the switch here, before any kernel runs, is enough.
"""

import os

import pytest
import torch
from torch import nn

pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[test]' or '.[triton]'): "
                                     "the fused kernel's parity tests need its interpreter")
os.environ["TRITON_INTERPRET"] = "1"

from conftest import build_model  # noqa: E402
from softprompt.errors import SoftPromptError  # noqa: E402
from softprompt.layers import PromptEmbedding, fused  # noqa: E402
from softprompt.model import SoftPromptModel  # noqa: E402
from test_shared_prefix import TinyOffset, batch  # noqa: E402

DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def layer_pair(dim=12, p=3, offset=True, seed=0):
    """The same prompt and offset in a torch-path layer and a triton-path layer."""
    torch.manual_seed(seed)
    prompt = torch.randn(p, dim)
    state = TinyOffset(4, dim).state_dict() if offset else None
    layers = []
    for kernel in ["torch", "triton"]:
        off = None
        if offset:
            off = TinyOffset(4, dim)
            off.load_state_dict(state)
        layers.append(PromptEmbedding(prompt, offset=off, kernel=kernel))
    return layers


def frozen_table(vocab=40, dim=12, dtype=torch.float32):
    table = nn.Embedding(vocab, dim).to(dtype)
    table.requires_grad_(False)
    return table


def grads(layer, out, weight):
    params = [layer.prompt] + ([layer.offset.table] if layer.offset is not None else [])
    return torch.autograd.grad((out.double() * weight).sum(), params, allow_unused=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [True, False])
def test_concat_and_tokens_equal_the_torch_path(dtype, offset):
    ref, fast = layer_pair(offset=offset)
    table = frozen_table(dtype=dtype)
    ids, mask, _ = batch("mixed")
    ids = ids % table.num_embeddings
    want, want_mask = ref(ids, mask, table)
    got, got_mask = fast(ids, mask, table)
    assert got.dtype == want.dtype == dtype and got.shape == (3, 3 + 9, 12)
    assert torch.equal(got, want) and torch.equal(got_mask, want_mask)  # bitwise, bf16 rounding included
    tokens = fast.token_embeds(ids, mask, table)
    assert torch.equal(tokens, ref.token_embeds(ids, mask, table))

    weight = torch.randn(want.shape, dtype=torch.float64)
    got_grads = grads(fast, got, weight)
    if dtype == torch.bfloat16:
        # torch sums the bf16 gradient in bf16, the kernel in fp32: compare with the fp32 torch path fed
        # the same (bf16-rounded) upstream gradient (the output is linear in prompt and offset rows)
        ref32 = layer_pair(offset=offset)[0]
        want32, _ = ref32(ids, mask, frozen_table(dtype=torch.float32))
        want_grads = grads(ref32, want32, weight.to(dtype).double())
    else:
        want_grads = grads(ref, want, weight)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)
    if not offset:
        assert not tokens.requires_grad  # nothing trainable in the tokens-only variant
        return
    token_grads = grads(fast, tokens, weight[:, 3:])
    assert token_grads[0] is None  # the tokens-only variant does not touch the prompt
    if dtype != torch.bfloat16:
        want_tokens = grads(ref, ref.token_embeds(ids, mask, table), weight[:, 3:])
        torch.testing.assert_close(token_grads[1], want_tokens[1], rtol=1e-6, atol=1e-6)


def test_gradcheck_fp64():
    torch.manual_seed(0)
    table = torch.randn(20, 4, dtype=torch.float64)
    prompt = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    rows = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 20, (2, 3))
    index = torch.tensor([[0, 1, -1], [-1, 0, 0]])  # padding and a repeated row (accumulation)
    assert torch.autograd.gradcheck(lambda pr, ro: fused.concat_embeds(pr, table, ids, ro, index), (prompt, rows))
    assert torch.autograd.gradcheck(lambda ro: fused.token_embeds(table, ids, ro, index), (rows,))
    assert torch.autograd.gradcheck(lambda pr: fused.concat_embeds(pr, table, ids), (prompt,))


def test_the_frozen_table_gets_no_gradient():
    torch.manual_seed(0)
    table = torch.randn(20, 4)
    prompt = torch.randn(2, 4, requires_grad=True)
    rows = torch.randn(3, 4, requires_grad=True)
    out = fused.concat_embeds(prompt, table, torch.tensor([[1, 2, 3]]), rows, torch.tensor([[0, 1, 2]]))
    out.sum().backward()
    assert table.grad is None and prompt.grad is not None and rows.grad is not None


def test_path_is_chosen_in_one_place(monkeypatch):
    table = frozen_table()
    cpu = torch.device("cpu")
    assert not fused.enabled("auto", table, cpu)  # auto: CUDA only
    assert not fused.enabled("torch", table, cpu)
    assert fused.enabled("triton", table, cpu)  # forced, under the interpreter
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(SoftPromptError, match="TRITON_INTERPRET=1"):
        fused.enabled("triton", table, cpu)
    monkeypatch.setenv("TRITON_INTERPRET", "1")

    class Scaled(nn.Embedding):
        def forward(self, ids):
            return super().forward(ids) * 2.0

    with pytest.raises(SoftPromptError, match="not a plain nn.Embedding"):
        fused.enabled("triton", Scaled(10, 4), cpu)
    with pytest.raises(SoftPromptError, match="trainable"):
        fused.enabled("triton", nn.Embedding(10, 4), cpu)
    with pytest.raises(SoftPromptError, match="prompt.kernel"):
        fused.enabled("cuda", table, cpu)


@pytest.mark.parametrize("execution", ["shared_prefix", "concat"])
def test_model_with_the_kernel_equals_the_torch_path(execution):
    base = build_model("llama", 400)
    ids, mask, labels = batch("mixed")
    results = []
    for layer in layer_pair(dim=32, p=4):
        model = SoftPromptModel(base, layer, execution=execution)
        out = model(ids, mask, labels=labels)
        out.loss.backward()
        results.append((out.loss.detach(), layer.prompt.grad, layer.offset.table.grad))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
