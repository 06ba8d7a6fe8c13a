"""Shared-prefix execution equals the concatenation path, does less work, and falls back where it must."""

import logging

import pytest
import torch
from torch import nn

from conftest import DECODER_FAMILIES, NOT_EXACT, build_model, tiny_config
from softprompt import shared_prefix
from softprompt.config import load_config
from softprompt.errors import ConfigError, SoftPromptError
from softprompt.layers import PromptEmbedding
from softprompt.model import SoftPromptModel

REQUIRED = ["llama", "gpt2", "qwen2", "mistral"]
MORE = [f for f in DECODER_FAMILIES if f not in NOT_EXACT]
VOCAB = 400


class TinyOffset(nn.Module):
    """The token-offset protocol (rows + index) at its simplest: row i goes to the i-th real token."""

    def __init__(self, length: int, dim: int):
        super().__init__()
        self.table = nn.Parameter(torch.randn(length, dim) * 0.1)

    def rows(self) -> torch.Tensor:
        return self.table * 1.0  # (s, D), through an op like DePT's gamma * A @ B

    def index(self, attention_mask: torch.Tensor) -> torch.Tensor:
        nth = attention_mask.long().cumsum(1) - 1  # (B, L): rank of each real token in its row
        return torch.where((attention_mask == 1) & (nth < self.table.shape[0]), nth, -1)

    def describe(self) -> dict:
        return {"type": "tiny", "length": self.table.shape[0], "dim": self.table.shape[1]}


def batch(side: str, seed: int = 0):
    """Three rows of different lengths padded on `side` ("mixed": one row each way)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    lengths = [9, 5, 6]
    for row, n in enumerate(lengths):
        pad = 9 - n
        if side == "right" or (side == "mixed" and row == 1):
            mask[row, n:] = 0
        elif pad:
            mask[row, :pad] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask, ids.masked_fill(mask == 0, -100)


def run(base, execution, prompt, offset_state, ids, mask, labels):
    """Loss, logits and gradients of one path over a fresh layer with the given parameters."""
    dim = prompt.shape[1]
    offset = TinyOffset(4, dim)
    offset.load_state_dict(offset_state)
    model = SoftPromptModel(base, PromptEmbedding(prompt, offset=offset), execution=execution)
    assert model.execution_mode() == execution
    out = model(ids, mask, labels=labels)
    out.loss.backward()
    return out.loss.detach(), out.logits.detach(), model.prompt.prompt.grad, offset.table.grad


def assert_paths_equal(base, side, p=5):
    torch.manual_seed(1)
    dim = base.get_input_embeddings().weight.shape[1]
    prompt = torch.randn(p, dim) * 0.5
    offset_state = TinyOffset(4, dim).state_dict()
    ids, mask, labels = batch(side)
    loss_c, logits_c, grad_c, off_c = run(base, "concat", prompt, offset_state, ids, mask, labels)
    loss_s, logits_s, grad_s, off_s = run(base, "shared_prefix", prompt, offset_state, ids, mask, labels)
    assert grad_c.abs().sum() > 0 and off_c.abs().sum() > 0  # both parameters matter to the loss
    assert logits_s.shape == logits_c.shape == (*ids.shape, VOCAB)
    torch.testing.assert_close(loss_s, loss_c, rtol=1e-6, atol=0)
    real = mask.bool()
    torch.testing.assert_close(logits_s[real], logits_c[real], rtol=0, atol=1e-6 * logits_c.abs().max().item())
    for got, want in [(grad_s, grad_c), (off_s, off_c)]:  # relative to the largest entry
        torch.testing.assert_close(got, want, rtol=0, atol=2e-6 * want.abs().max().item())


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family", REQUIRED)
def test_shared_prefix_equals_concat(family, side):
    assert_paths_equal(build_model(family, VOCAB), side)


def test_sliding_window_narrower_than_prompt_and_input():
    from transformers import AutoModelForCausalLM

    cfg = tiny_config("mistral", VOCAB)
    cfg.sliding_window = 4  # < p + L: some real tokens no longer see the prompt
    torch.manual_seed(0)
    assert_paths_equal(AutoModelForCausalLM.from_config(cfg).eval(), "mixed")


@pytest.mark.parametrize("family", MORE)
def test_more_decoder_families(family):
    assert_paths_equal(build_model(family, VOCAB), "mixed")


@pytest.mark.parametrize("family", REQUIRED + MORE)
def test_auto_takes_the_fast_path_wherever_it_is_exact(family):
    """No model-type list: every family the parity tests above hold equal gets the fast path by itself."""
    model = SoftPromptModel(build_model(family, VOCAB), PromptEmbedding(torch.randn(3, 32)))
    assert model.execution_mode() == "shared_prefix"


@pytest.mark.parametrize("family", sorted(NOT_EXACT))
def test_auto_never_takes_an_inexact_fast_path(family, caplog):
    """Length-dependent rotary scalings (dynamic NTK, LongRoPE) and models whose cache is not a plain
    key/value cache: the forced fast path is inexact or fails, so auto concatenates and says why."""
    base = build_model(family, VOCAB)
    shared_prefix._logged.clear()  # reasons are logged once per process; earlier tests may have seen this one
    with caplog.at_level(logging.INFO, logger="softprompt.shared_prefix"):
        model = SoftPromptModel(base, PromptEmbedding(torch.randn(3, 32)))
        assert model.execution_mode() == "concat"
    assert NOT_EXACT[family] in caplog.text
    with pytest.raises(SoftPromptError, match="shared_prefix cannot run here"):
        SoftPromptModel(base, PromptEmbedding(torch.randn(3, 32)), execution="shared_prefix")


@pytest.mark.parametrize("family", ["llama-dynamic", "phi3-longrope"])
def test_length_dependent_rope_really_differs_on_the_fast_path(family):
    """Why the rule above exists: run the fast path anyway (bypassing the choice) on rows long enough to
    cross the scaling threshold, and the prompt's gradient moves away from concatenation's. Each path gets
    a fresh model (same weights): the rotary module keeps state between calls."""
    torch.manual_seed(0)
    prompt = torch.randn(8, 32) * 0.5  # the prompt's own pass stays under the 16-token threshold, p + L does not
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (2, 24), generator=g)
    mask = torch.ones_like(ids)
    grads = {}
    for execution in ["concat", "shared_prefix"]:
        model = SoftPromptModel(build_model(family, VOCAB), PromptEmbedding(prompt), execution="concat")
        model.execution_mode = lambda e=execution: e  # the path itself, not the choice, is under test
        model(ids, mask, labels=ids).loss.backward()
        grads[execution] = model.prompt.prompt.grad
    diff = (grads["concat"] - grads["shared_prefix"]).abs().max() / grads["concat"].abs().max()
    assert diff > 1e-4


def test_default_is_shared_prefix_and_does_less_work():
    base = build_model("llama", VOCAB)
    p = 6
    ids, mask, labels = batch("left")
    positions = {}
    for execution in ["auto", "concat"]:
        model = SoftPromptModel(base, PromptEmbedding(torch.randn(p, 32)), execution=execution)
        rows = []
        layer_hook = base.model.layers[0].register_forward_hook(lambda m, a, out: rows.append(a[0].shape[:2]))
        head = []
        head_hook = base.lm_head.register_forward_hook(lambda m, a, out: head.append(a[0].shape[:2]))
        model(ids, mask, labels=labels).loss.backward()
        layer_hook.remove(), head_hook.remove()
        positions[execution] = (sum(r[0] * r[1] for r in rows), head)
    b, length = ids.shape
    assert positions["auto"][0] == p + b * length  # the prompt once, then only the real tokens
    assert positions["concat"][0] == b * (p + length)
    assert positions["auto"][1] == positions["concat"][1] == [torch.Size([b, length])]  # no virtual logits


def test_fallbacks_and_forcing(caplog):
    shared_prefix._logged.clear()  # reasons are logged once per process; other tests may have seen these
    with caplog.at_level(logging.INFO, logger="softprompt.shared_prefix"):
        for family in ["t5", "bert"]:
            model = SoftPromptModel(build_model(family, VOCAB), PromptEmbedding(torch.randn(3, 32)))
            assert model.execution_mode() == "concat"
            with pytest.raises(SoftPromptError, match="bidirectionally"):
                SoftPromptModel(build_model(family, VOCAB), PromptEmbedding(torch.randn(3, 32)),
                                execution="shared_prefix")
        # a hybrid attention/Mamba model fails the parity probe: auto concatenates and says so
        jamba = SoftPromptModel(build_model("jamba", VOCAB), PromptEmbedding(torch.randn(3, 32)))
        assert jamba.execution_mode() == "concat"
    assert "shared-prefix execution off" in caplog.text and "Jamba" in caplog.text
    with pytest.raises(SoftPromptError, match="prompt.execution"):
        SoftPromptModel(build_model("llama", VOCAB), PromptEmbedding(torch.randn(3, 32)), execution="fast")


def test_gradient_checkpointing_falls_back_to_concat():
    base = build_model("llama", VOCAB)
    ids, mask, labels = batch("right")
    prompt = torch.randn(4, 32)
    reference = SoftPromptModel(base, PromptEmbedding(prompt), execution="concat")
    want = reference(ids, mask, labels=labels).loss
    model = SoftPromptModel(base, PromptEmbedding(prompt))
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    base.train()
    assert model.execution_mode() == "concat"  # HF's checkpointed layers would drop the prompt cache
    loss = model(ids, mask, labels=labels).loss
    loss.backward()
    torch.testing.assert_close(loss, want)
    forced = SoftPromptModel(base, PromptEmbedding(prompt), execution="concat")
    forced.execution = "shared_prefix"
    with pytest.raises(SoftPromptError, match="gradient checkpointing"):
        forced(ids, mask, labels=labels)
    base.eval()
    assert model.execution_mode() == "shared_prefix"  # evaluation does not checkpoint


def test_no_grad_forward_reuses_the_prompt_cache_until_the_prompt_changes():
    base = build_model("llama", VOCAB)
    model = SoftPromptModel(base, PromptEmbedding(torch.randn(4, 32)))
    ids, mask, labels = batch("left")
    calls = []
    hook = base.model.register_forward_hook(lambda m, a, kw, out: calls.append(kw["inputs_embeds"].shape[0]),
                                            with_kwargs=True)
    with torch.no_grad():
        first = model(ids, mask, labels=labels).loss
        again = model(ids, mask, labels=labels).loss
        assert calls == [1, 3, 3]  # the prompt ran once for both calls
        model.prompt.prompt.add_(0.5)  # an in-place update (as an optimizer step) invalidates it
        moved = model(ids, mask, labels=labels).loss
    hook.remove()
    assert calls == [1, 3, 3, 1, 3]
    assert first == again and moved != first
    fresh = SoftPromptModel(base, PromptEmbedding(model.prompt.prompt.detach()), execution="concat")
    with torch.no_grad():
        torch.testing.assert_close(moved, fresh(ids, mask, labels=labels).loss, rtol=1e-6, atol=0)


def test_hidden_states_are_aligned():
    base = build_model("llama", VOCAB)
    ids, mask, _ = batch("left")
    outs = {}
    for execution in ["shared_prefix", "concat"]:
        model = SoftPromptModel(base, PromptEmbedding(torch.ones(4, 32)), execution=execution)
        with torch.no_grad():
            outs[execution] = model(ids, mask, output_hidden_states=True).hidden_states
    assert outs["concat"].shape == (*ids.shape, 32)
    torch.testing.assert_close(outs["shared_prefix"][mask.bool()], outs["concat"][mask.bool()], rtol=1e-5, atol=1e-5)


def test_execution_is_a_config_choice():
    assert load_config(overrides=["prompt.execution=concat"]).prompt.execution == "concat"
    assert load_config().prompt.execution == "auto"
    with pytest.raises(ConfigError, match="prompt.execution"):
        load_config(overrides=["prompt.execution=fast"])


def test_method_threads_execution(tokenizer):
    from softprompt import build

    cfg = load_config(overrides=["prompt.execution=concat", "prompt.num_virtual_tokens=3"])
    model = build.build_model(cfg, build_model("llama", len(tokenizer)), tokenizer, "causal")
    assert model.execution == "concat" and model.execution_mode() == "concat"


def test_bf16_autocast_stays_close():
    """Under bf16 autocast both paths round differently; they must still agree to bf16 precision."""
    base = build_model("llama", VOCAB)
    ids, mask, labels = batch("left")
    prompt = torch.randn(5, 32) * 0.5
    losses = {}
    for execution in ["shared_prefix", "concat"]:
        model = SoftPromptModel(base, PromptEmbedding(prompt), execution=execution)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(ids, mask, labels=labels)
        out.loss.backward()
        losses[execution] = (out.loss.detach().float(), model.prompt.prompt.grad)
        assert model.prompt.prompt.grad.dtype == torch.float32  # the master copy stays fp32
    (loss_s, grad_s), (loss_c, grad_c) = losses.values()
    torch.testing.assert_close(loss_s, loss_c, rtol=2e-2, atol=0)
    assert torch.nn.functional.cosine_similarity(grad_s.flatten(), grad_c.flatten(), dim=0) > 0.99



def test_parity_probe_leaves_modes_and_rng_alone():
    """Choosing the path must not change the model: modules a user put in eval stay there, and dropout
    in a training-mode model draws nothing from the global RNG."""
    cfg = tiny_config("llama", VOCAB)
    cfg.attention_dropout = 0.1
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_config(cfg)
    base.train()
    base.model.layers[0].eval()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    SoftPromptModel(base, PromptEmbedding(torch.randn(3, 32, generator=torch.Generator().manual_seed(0))))
    assert torch.equal(torch.get_rng_state(), before)
    assert base.training and not base.model.layers[0].training and base.model.layers[1].training


def test_probe_runs_again_when_the_model_changes_under_it():
    """The probe's answer is cached per model and per dtype/device/attention implementation."""
    base = build_model("llama", VOCAB)
    assert shared_prefix.exactness_blocker(base) is None
    assert len(shared_prefix._probed[base]) == 1
    base.to(torch.float64)
    assert shared_prefix.exactness_blocker(base) is None
    assert len(shared_prefix._probed[base]) == 2  # probed again for the new dtype
