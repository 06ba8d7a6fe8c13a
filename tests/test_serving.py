"""Serving payloads (softprompt.serving): what a payload carries, decoded as the engine decodes it, run through
the base, gives our model's logits; on Gemma too, whose embeddings are scaled (and which SGLang scales again)."""

import json
import math

import pytest
import torch

from conftest import build_model
from softprompt import SoftPromptModel, serving
from softprompt.cli import main
from softprompt.errors import SoftPromptError
from softprompt.layers import PromptBank, PromptEmbedding
from softprompt.layers.dept import DeptOffset
from softprompt.selectors.key import KeySelector


def with_prompt(family: str, source: str, tokenizer) -> SoftPromptModel:
    base = build_model(family, len(tokenizer))
    d = base.get_input_embeddings().weight.shape[1]
    g = torch.Generator().manual_seed(0)
    if source == "bank":
        # the key selector: the attention one refuses the sliding windows of some of these families
        return SoftPromptModel(base, PromptBank(torch.randn(3, 4, d, generator=g)), tokenizer, "causal",
                               selector=KeySelector(torch.randn(3, d, generator=g))).eval()
    offset = None
    if source == "dept":
        offset = DeptOffset(32, 2, d, padding_side="left", generator=g)
        with torch.no_grad():
            offset.B.normal_(generator=g)
    return SoftPromptModel(base, PromptEmbedding(torch.randn(4, d, generator=g), offset=offset), tokenizer, "causal").eval()


TEXT = "the cat sat on the mat"


@pytest.mark.parametrize("family", ["llama", "gemma", "gemma2", "gemma3_text", "gpt2"])
@pytest.mark.parametrize("source", ["plain", "dept", "bank"])
@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_the_base_run_on_a_decoded_payload_gives_our_logits(tokenizer, family, source, engine):
    model = with_prompt(family, source, tokenizer)
    body = json.loads(serving.to_json(serving.payload(model, TEXT, engine=engine, dtype="float32", max_tokens=4)))
    rows = serving.payload_rows(body, model, engine)  # (n, D), as the engine holds them, in our space
    ids = torch.tensor([tokenizer(TEXT)["input_ids"]])
    p = model.prompt.num_virtual_tokens
    assert rows.shape == (p + ids.shape[1], model.prompt.dim)
    with torch.no_grad():
        theirs = model.base(inputs_embeds=rows[None]).logits[:, p:]
        ours = model(ids).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family, engine, unscaled", [("gemma", "sglang", True), ("gemma2", "sglang", True),
                                                      ("gemma3_text", "sglang", False), ("gemma", "vllm", False),
                                                      ("llama", "sglang", False)])
def test_the_wire_rows_are_in_the_space_each_engine_takes(tokenizer, family, engine, unscaled):
    """SGLang multiplies a Gemma 1/2 input by sqrt(hidden) as it does token embeddings; vLLM and Gemma 3 do not."""
    model = with_prompt(family, "plain", tokenizer)
    ours = serving.embeddings(model, TEXT)
    body = serving.payload(model, TEXT, engine=engine, dtype="float32")
    wire = serving.decode_tensor(body["prompt_embeds"]) if engine == "vllm" else torch.tensor(body["input_embeds"])
    scale = math.sqrt(model.base.config.hidden_size) if unscaled else 1.0
    torch.testing.assert_close(wire * scale, ours, rtol=1e-6, atol=1e-6)


def test_dtype_on_the_wire_and_refusals(tokenizer):
    model = with_prompt("llama", "plain", tokenizer)
    assert serving.decode_tensor(serving.payload(model, TEXT, dtype="bfloat16")["prompt_embeds"]).dtype == torch.bfloat16
    with pytest.raises(SoftPromptError, match="dtype 'int8' is not a floating-point"):
        serving.payload(model, TEXT, dtype="int8")
    with pytest.raises(SoftPromptError, match="use engine vllm \\(the Completions API\\)"):
        serving.payload(model, TEXT, engine="vllm-chat")
    t5 = SoftPromptModel(build_model("t5", len(tokenizer)), PromptEmbedding(torch.randn(4, 32)), tokenizer, "seq2seq")
    with pytest.raises(SoftPromptError, match="decoder-only models"):
        serving.payload(t5, TEXT)


def test_serve_payload_cli(saved_model, tokenizer, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    path = saved_model("llama")
    model = SoftPromptModel(AutoModelForCausalLM.from_pretrained(path), PromptEmbedding(torch.randn(4, 32)), tokenizer,
                            base_config=path)
    adapter = model.save_adapter(tmp_path / "a")
    assert main(["serve-payload", str(adapter), TEXT, "--model-name", "m", "--max-tokens", "5"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["model"] == "m" and body["max_tokens"] == 5
    torch.testing.assert_close(serving.decode_tensor(body["prompt_embeds"]), serving.embeddings(model, TEXT))
    assert main(["serve-payload", str(adapter), TEXT, "--engine", "vllm-chat"]) == 2
    assert "use engine vllm" in capsys.readouterr().err
