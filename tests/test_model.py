"""SoftPromptModel over real tiny HF models: alignment, padding invariance, prompt placement, generate."""

import pytest
import torch

from conftest import build_model
from softprompt.config import PromptConfig
from softprompt.layers import PromptEmbedding
from softprompt.layers.inits import initial_prompt
from softprompt.model import SoftPromptModel

CAUSAL = ["llama", "gpt2", "qwen2", "mistral"]


def wrap(family, tokenizer, p=5, seed=0):
    base = build_model(family, len(tokenizer), seed=seed)
    init = initial_prompt(PromptConfig(num_virtual_tokens=p), base.get_input_embeddings().weight, tokenizer, seed)
    return SoftPromptModel(base, PromptEmbedding(init), tokenizer)


def encode(tokenizer, texts, side):
    tokenizer.padding_side = side
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    tokenizer.padding_side = "right"
    return enc["input_ids"], enc["attention_mask"]


TEXTS = ["the cat sat on the mat", "apple = red", "one two"]


@pytest.mark.parametrize("family", CAUSAL + ["bert"])
def test_outputs_aligned_and_padding_side_invariant(family, tokenizer):
    model = wrap(family, tokenizer)
    right_ids, right_mask = encode(tokenizer, TEXTS, "right")
    left_ids, left_mask = encode(tokenizer, TEXTS, "left")
    with torch.no_grad():
        right = model(right_ids, right_mask)
        left = model(left_ids, left_mask)
    out_r = right.logits if right.logits is not None else right.hidden_states
    out_l = left.logits if left.logits is not None else left.hidden_states
    assert out_r.shape[:2] == right_ids.shape  # no positions for the virtual tokens
    for row, text in enumerate(TEXTS):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            alone = model(ids)
        alone = alone.logits if alone.logits is not None else alone.hidden_states
        n = ids.shape[1]
        torch.testing.assert_close(out_r[row, :n], alone[0], atol=1e-5, rtol=1e-4)  # right padding
        torch.testing.assert_close(out_l[row, -n:], alone[0], atol=1e-5, rtol=1e-4)  # left padding


def test_seq2seq_padding_side_invariant(tokenizer):
    model = wrap("t5", tokenizer)
    labels = torch.tensor([tokenizer("red", add_special_tokens=False)["input_ids"]] * len(TEXTS))
    with torch.no_grad():
        right = model(*encode(tokenizer, TEXTS, "right"), labels=labels)
        left = model(*encode(tokenizer, TEXTS, "left"), labels=labels)
    torch.testing.assert_close(right.logits, left.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(right.loss, left.loss)


def test_seq2seq_prompt_on_encoder_only(tokenizer):
    model = wrap("t5", tokenizer, p=7)
    ids, mask = encode(tokenizer, TEXTS, "right")
    labels = torch.tensor([tokenizer("red", add_special_tokens=False)["input_ids"]] * len(TEXTS))
    seen = {}
    enc = model.base.get_encoder()
    dec = model.base.get_decoder()
    h1 = enc.register_forward_hook(lambda m, a, kw, out: seen.__setitem__("enc", out.last_hidden_state.shape), with_kwargs=True)
    h2 = dec.register_forward_hook(lambda m, a, kw, out: seen.__setitem__("dec", out.last_hidden_state.shape), with_kwargs=True)
    with torch.no_grad():
        out = model(ids, mask, labels=labels)
    h1.remove(), h2.remove()
    assert seen["enc"][1] == ids.shape[1] + 7  # the encoder sees p + L positions
    assert seen["dec"][1] == labels.shape[1]  # the decoder sees only its own tokens
    assert out.logits.shape[1] == labels.shape[1]
    # and the prompt matters to the decoder's output (through cross-attention)
    with torch.no_grad():
        model.prompt.prompt.add_(1.0)
        moved = model(ids, mask, labels=labels)
    assert not torch.allclose(moved.logits, out.logits)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lm_head_never_sees_virtual_positions(family, tokenizer):
    model = wrap(family, tokenizer, p=6)
    ids, mask = encode(tokenizer, TEXTS, "right")
    rows = []
    hook = model.base.get_output_embeddings().register_forward_hook(lambda m, a, out: rows.append(a[0].shape[1]))
    with torch.no_grad():
        model(ids, mask)
    hook.remove()
    assert rows == [ids.shape[1]]


def test_encoder_head_never_sees_virtual_positions(tokenizer):
    model = wrap("bert", tokenizer, p=6)  # BertForMaskedLM: body + MLM head
    ids, mask = encode(tokenizer, TEXTS, "right")
    rows = []
    hook = model.base.cls.register_forward_hook(lambda m, a, out: rows.append(a[0].shape[1]))
    with torch.no_grad():
        got = model(ids, mask).logits
        embeds, full_mask = model.prompt(ids, mask, model.input_table)  # (B, p+L, D): the plain concatenation
        want = model.base(inputs_embeds=embeds, attention_mask=full_mask).logits[:, 6:]  # the model's own positions
    hook.remove()
    assert rows == [ids.shape[1], ids.shape[1] + 6]  # ours: L rows; the plain call: p + L
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_only_prompt_gets_gradients(tokenizer):
    model = wrap("llama", tokenizer)
    ids, mask = encode(tokenizer, TEXTS, "right")
    out = model(ids, mask, labels=ids.masked_fill(mask == 0, -100))
    out.loss.backward()
    assert model.prompt.prompt.grad is not None and model.prompt.prompt.grad.abs().sum() > 0
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt.prompt"]
    assert all(p.grad is None for n, p in model.base.named_parameters())


def greedy_by_hand(model, ids, mask, steps):
    """A plain greedy loop without cache over the same embeddings generate starts from."""
    embeds, full_mask = model.prompted_inputs(ids, mask)
    table = model.base.get_input_embeddings()
    out = []
    for _ in range(steps):
        pos = (full_mask.cumsum(1) - 1).clamp(min=0)
        logits = model.base(inputs_embeds=embeds, attention_mask=full_mask, position_ids=pos).logits[:, -1]
        nxt = logits.argmax(-1)
        out.append(nxt)
        embeds = torch.cat([embeds, table(nxt)[:, None]], 1)  # (B, T+1, D)
        full_mask = torch.cat([full_mask, torch.ones_like(full_mask[:, :1])], 1)
    return torch.stack(out, 1)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_generate_equals_manual_greedy_loop(family, side, tokenizer):
    model = wrap(family, tokenizer)
    ids, mask = encode(tokenizer, TEXTS, side)
    with torch.no_grad():
        got = model.generate(ids, mask, max_new_tokens=6, eos_token_id=None, min_new_tokens=6)
        want = greedy_by_hand(model, ids, mask, 6)
    assert torch.equal(got, want)


def test_generate_batched_equals_one_by_one(tokenizer):
    model = wrap("llama", tokenizer)
    batched = model.generate(TEXTS, max_new_tokens=5, eos_token_id=None)
    single = [model.generate(t, max_new_tokens=5, eos_token_id=None) for t in TEXTS]
    assert batched == single


def test_seq2seq_generate_matches_greedy(tokenizer):
    model = wrap("t5", tokenizer)
    ids, mask = encode(tokenizer, TEXTS, "left")
    with torch.no_grad():
        got = model.generate(ids, mask, max_new_tokens=4, eos_token_id=None, min_new_tokens=4)
        embeds, emask = model.prompted_inputs(ids, mask)
        dec = torch.full((len(TEXTS), 1), model.base.config.decoder_start_token_id)
        for _ in range(4):
            logits = model.base(inputs_embeds=embeds, attention_mask=emask, decoder_input_ids=dec).logits[:, -1]
            dec = torch.cat([dec, logits.argmax(-1, keepdim=True)], 1)
    assert torch.equal(got, dec)


def test_from_pretrained_local_path(saved_model):
    model = SoftPromptModel.from_pretrained(saved_model("llama"), num_virtual_tokens=3)
    assert model.kind == "causal" and model.trainable_parameters() == 3 * 32
