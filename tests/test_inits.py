"""Prompt initialisations against the embedding table they read from."""

import pytest
import torch

from conftest import build_model
from softprompt.config import PromptConfig
from softprompt.errors import SoftPromptError
from softprompt.layers.inits import initial_prompt


@pytest.fixture()
def base(tokenizer):
    return build_model("llama", len(tokenizer))


def test_uniform_range(base, tokenizer):
    out = initial_prompt(PromptConfig(num_virtual_tokens=50, init="uniform", init_range=0.25), base.get_input_embeddings().weight, tokenizer, 0)
    assert out.shape == (50, 32) and out.dtype == torch.float32
    assert out.min() >= -0.25 and out.max() <= 0.25 and out.min() < -0.2 and out.max() > 0.2


def test_vocab_rows_are_frequent_non_special_rows(base, tokenizer):
    table = base.get_input_embeddings().weight
    out = initial_prompt(PromptConfig(num_virtual_tokens=10, init="vocab", vocab_top_k=40), base.get_input_embeddings().weight, tokenizer, 0)
    special = set(tokenizer.all_special_ids)
    allowed = [i for i in range(60) if i not in special][:40]
    for row in out:
        matches = [i for i in range(table.shape[0]) if torch.equal(table[i], row)]
        assert len(matches) == 1 and matches[0] in allowed
    assert len({tuple(r.tolist()) for r in out}) == 10  # without replacement


def test_text_init_tiles_cyclically(base, tokenizer):
    ids = tokenizer("apple red")["input_ids"]  # special tokens included, as PEFT tokenizes init text
    out = initial_prompt(PromptConfig(num_virtual_tokens=len(ids) * 2 + 1, init="text", init_text="apple red"), base.get_input_embeddings().weight, tokenizer, 0)
    table = base.get_input_embeddings().weight
    expected = [ids[i % len(ids)] for i in range(len(ids) * 2 + 1)]
    for row, i in zip(out, expected):
        assert torch.equal(row, table[i])


def test_class_label_init_means_subtokens(base, tokenizer):
    labels = ("banana", "sky")
    out = initial_prompt(PromptConfig(num_virtual_tokens=4, init="class_label", init_labels=labels), base.get_input_embeddings().weight, tokenizer, 0)
    table = base.get_input_embeddings().weight
    for slot, label in enumerate(labels):
        ids = tokenizer(label, add_special_tokens=False)["input_ids"]
        torch.testing.assert_close(out[slot], table[ids].mean(0))
    with pytest.raises(SoftPromptError, match="labels but only"):
        initial_prompt(PromptConfig(num_virtual_tokens=1, init="class_label", init_labels=labels), base.get_input_embeddings().weight, tokenizer, 0)


def test_file_init_roundtrip_and_shape_error(base, tokenizer, tmp_path):
    from safetensors.torch import save_file

    t = torch.randn(3, 32)
    save_file({"prompt_embeddings": t}, str(tmp_path / "p.safetensors"))
    out = initial_prompt(PromptConfig(num_virtual_tokens=3, init="file", init_file=str(tmp_path / "p.safetensors")), base.get_input_embeddings().weight, tokenizer, 0)
    assert torch.equal(out, t)
    with pytest.raises(SoftPromptError, match=r"shape \(3, 32\), expected \(4, 32\)"):
        initial_prompt(PromptConfig(num_virtual_tokens=4, init="file", init_file=str(tmp_path / "p.safetensors")), base.get_input_embeddings().weight, tokenizer, 0)
