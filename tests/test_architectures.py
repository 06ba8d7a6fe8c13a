"""Right on every architecture we accept: a table of families, each checked against the model's own run.

The reference for a row is the frozen model called by itself on `[prompt; tokens]` embeddings of that
row alone: no padding, no position ids from us, so the model numbers the positions its own way
(RoBERTa from padding_idx + 1, OPT with its offset, ALiBi by distance) and applies its own windows.
Ours must equal it for the row inside a left-padded batch and a right-padded batch, on every path
`auto` picks; batched `generate` must equal generating each row alone.
"""

import pytest
import torch

from conftest import DECODER_FAMILIES, ENCODER_FAMILIES, build_model
from softprompt import shared_prefix
from softprompt.layers import PromptEmbedding
from softprompt.model import SoftPromptModel

VOCAB = 400
P = 5
TEXTS = ["the cat sat on the mat one two three", "apple = red", "one two"]  # 10, 4, 3 tokens
CAUSAL = ["llama", "gpt2", "qwen2", "mistral", *DECODER_FAMILIES]
ENCODERS = list(ENCODER_FAMILIES)
SEQ2SEQ = ["t5", "bart"]
# Families whose attention counts key columns (windows narrower than p + L, local attention, ALiBi)
COLUMN_SENSITIVE = ["mistral-window", "qwen2-window", "mixtral-window", "phi3-window", "starcoder2-window", "gemma2",
                    "gemma3_text", "cohere2", "olmo3", "gpt_neo", "mpt", "bloom"]


def wrap(family, seed=0):
    base = build_model(family, VOCAB, seed=seed)
    torch.manual_seed(seed + 1)
    scale = base.get_input_embeddings().weight.detach().float().std()
    return SoftPromptModel(base, PromptEmbedding(torch.randn(P, base.get_input_embeddings().weight.shape[1]) * scale))


def batch(tokenizer, side):
    tokenizer.padding_side = side
    enc = tokenizer(TEXTS, return_tensors="pt", padding=True)
    tokenizer.padding_side = "right"
    return enc["input_ids"], enc["attention_mask"]


def own_run(model, ids, **kwargs):
    """The base alone on [prompt; tokens] of one unpadded row: (1, L, V) for the L real tokens."""
    embeds, _ = model.prompt(ids, torch.ones_like(ids), model.input_table)  # (1, p+L, D)
    out = model.base(inputs_embeds=embeds, use_cache=False, **kwargs)
    return out.logits[:, P:] if not model.base.config.is_encoder_decoder else out.logits


def outputs(model, tokenizer, side, **kwargs):
    ids, mask = batch(tokenizer, side)
    with torch.no_grad():
        return model(ids, mask, **kwargs).logits, mask


def assert_rows_match(model, tokenizer, family):
    for side in ("left", "right"):
        got, mask = outputs(model, tokenizer, side)
        for row, text in enumerate(TEXTS):
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            with torch.no_grad():
                want = own_run(model, ids)[0]
            real = got[row][mask[row].bool()]  # (n, V)
            scale = want.abs().max().item()
            torch.testing.assert_close(real, want, rtol=0, atol=2e-5 * max(scale, 1.0),
                                       msg=lambda m: f"{family}, {side} padding, row {row}: {m}")


@pytest.mark.parametrize("family", CAUSAL)
def test_causal_rows_equal_the_models_own_run(family, tokenizer):
    model = wrap(family)
    assert_rows_match(model, tokenizer, family)


@pytest.mark.parametrize("family", ["llama", "gpt2", *COLUMN_SENSITIVE])
def test_causal_rows_equal_the_models_own_run_on_concatenation_too(family, tokenizer):
    model = wrap(family)
    model.execution = "concat"
    assert_rows_match(model, tokenizer, family)


@pytest.mark.parametrize("family", ENCODERS)
def test_encoder_rows_equal_the_models_own_run(family, tokenizer):
    assert_rows_match(wrap(family), tokenizer, family)


@pytest.mark.parametrize("family", SEQ2SEQ)
def test_seq2seq_rows_equal_the_models_own_run(family, tokenizer):
    model = wrap(family)
    dec = torch.tensor([[2, 7, 9]])
    for side in ("left", "right"):
        ids, mask = batch(tokenizer, side)
        with torch.no_grad():
            got = model(ids, mask, decoder_input_ids=dec.expand(len(TEXTS), -1)).logits
        for row, text in enumerate(TEXTS):
            one = torch.tensor([tokenizer(text)["input_ids"]])
            with torch.no_grad():
                want = own_run(model, one, decoder_input_ids=dec)[0]
            torch.testing.assert_close(got[row], want, rtol=0, atol=2e-5 * max(want.abs().max().item(), 1.0))


@pytest.mark.parametrize("family", ["llama", "gpt2", *COLUMN_SENSITIVE])
def test_batched_generate_equals_each_row_alone(family, tokenizer):
    model = wrap(family)
    model.tokenizer = tokenizer
    for side in ("left", "right"):
        ids, mask = batch(tokenizer, side)
        together = model.generate(ids, mask, max_new_tokens=6, pad_token_id=0, eos_token_id=None)
        for row, text in enumerate(TEXTS):
            one = torch.tensor([tokenizer(text)["input_ids"]])
            alone = model.generate(one, max_new_tokens=6, pad_token_id=0, eos_token_id=None)
            assert together[row].tolist() == alone[0].tolist(), f"{family}, {side} padding, row {row}"


def test_column_sensitive_families_are_recognised():
    """The generate fallback above rests on this reading of the configs."""
    for family in COLUMN_SENSITIVE:
        assert shared_prefix.column_sensitive(build_model(family, VOCAB).config) is not None, family
    for family in ["llama", "gpt2", "qwen2", "gpt_neox", "opt"]:
        assert shared_prefix.column_sensitive(build_model(family, VOCAB).config) is None, family


def test_roberta_matches_peft(tokenizer):
    """PEFT lets RoBERTa number [prompt; tokens] itself; our encoder output must equal PEFT's."""
    from peft import PeftModel, PromptTuningConfig, get_peft_model

    model = wrap("roberta")
    peft_model = get_peft_model(build_model("roberta", VOCAB), PromptTuningConfig(task_type="FEATURE_EXTRACTION",
                                                                                  num_virtual_tokens=P))
    assert isinstance(peft_model, PeftModel)
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(model.prompt.prompt)
        ids, mask = batch(tokenizer, "right")
        want = peft_model(input_ids=ids, attention_mask=mask).logits[:, P:]
        got = model(ids, mask).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], rtol=0, atol=2e-5 * max(want.abs().max().item(), 1.0))


def test_right_padded_hint_skips_the_check_and_changes_nothing(tokenizer, monkeypatch):
    """The training loop's batches are right-padded (data.collate): with the hint the causal path skips
    the left-padding check (a host sync per step on a GPU) and gives the same outputs."""
    import softprompt.model as model_module

    model = wrap("mistral-window")
    ids, mask = batch(tokenizer, "right")
    with torch.no_grad():
        plain = model(ids, mask, labels=ids)

    def no_check(mask):
        raise AssertionError("has_gaps ran although the batch was declared right-padded")

    monkeypatch.setattr(model_module, "has_gaps", no_check)
    with torch.no_grad():
        hinted = model(ids, mask, labels=ids, right_padded=True)
    assert torch.equal(hinted.logits, plain.logits) and torch.equal(hinted.loss, plain.loss)


def test_other_per_token_inputs_move_with_their_tokens(tokenizer):
    """GPT-2 takes token_type_ids: after right-alignment each still belongs to its token."""
    model = wrap("gpt2")
    outs = {}
    for side in ("left", "right"):
        ids, mask = batch(tokenizer, side)
        types = (ids % 2) * mask  # a per-token input tied to the token itself
        with torch.no_grad():
            logits = model(ids, mask, token_type_ids=types).logits
        outs[side] = [logits[row][mask[row].bool()] for row in range(len(TEXTS))]
    for left, right in zip(outs["left"], outs["right"]):
        torch.testing.assert_close(left, right, rtol=0, atol=1e-5)
