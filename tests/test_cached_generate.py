"""Generation from the prompt's cached keys/values equals generation from the concatenated embeddings."""

import pytest
import torch

from conftest import build_model
from softprompt.config import PromptConfig
from softprompt.layers import PromptEmbedding
from softprompt.layers.inits import initial_prompt
from softprompt.model import SoftPromptModel
from test_shared_prefix import TinyOffset

TEXTS = ["the cat sat on the mat", "apple = red", "one two", "sky"]


def pair(family, tokenizer, p=5, offset=False):
    """The same prompt (and offset) behind a cached (shared-prefix) and an uncached (concat) model."""
    base = build_model(family, len(tokenizer))
    init = initial_prompt(PromptConfig(num_virtual_tokens=p), base.get_input_embeddings().weight, tokenizer, 0)
    dim = init.shape[1]
    state = TinyOffset(3, dim).state_dict() if offset else None
    models = []
    for execution in ["shared_prefix", "concat"]:
        off = None
        if offset:
            off = TinyOffset(3, dim)
            off.load_state_dict(state)
        models.append(SoftPromptModel(base, PromptEmbedding(init, offset=off), tokenizer, execution=execution))
    return models


def encode(tokenizer, texts, side):
    tokenizer.padding_side = side
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    tokenizer.padding_side = "right"
    return enc["input_ids"], enc["attention_mask"]


def count_prompt_passes(model):
    """Calls of the decoder body on the prompt alone (batch 1, p positions)."""
    calls = []
    p = model.prompt.num_virtual_tokens

    def hook(module, args, kwargs, out):
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and embeds.shape[:2] == (1, p):
            calls.append(1)

    return calls, model.base.base_model.register_forward_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_cached_equals_uncached(family, side, tokenizer):
    cached, uncached = pair(family, tokenizer)
    ids, mask = encode(tokenizer, TEXTS, side)
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, eos_token_id=None)
    got = cached.generate(ids, mask, **kwargs)
    want = uncached.generate(ids, mask, **kwargs)
    assert got.shape == (len(TEXTS), 6)
    assert torch.equal(got, want)


def test_prompt_cache_is_computed_once_and_invalidated_by_updates(tokenizer):
    cached, uncached = pair("llama", tokenizer, offset=True)
    calls, handle = count_prompt_passes(cached)
    kwargs = dict(max_new_tokens=4, min_new_tokens=4, eos_token_id=None)
    first = cached.generate(TEXTS, **kwargs)
    second = cached.generate(TEXTS[:2], **kwargs)  # another call, another batch size
    assert len(calls) == 1 and first[:2] == second
    assert first == uncached.generate(TEXTS, **kwargs)
    with torch.no_grad():  # an optimizer-like in-place update of the prompt
        cached.prompt.prompt.mul_(-3.0)
        uncached.prompt.prompt.mul_(-3.0)
    third = cached.generate(TEXTS, **kwargs)
    handle.remove()
    assert len(calls) == 2 and third != first
    assert third == uncached.generate(TEXTS, **kwargs)


def test_cache_follows_the_prompt_through_load_state_dict(tokenizer):
    cached, uncached = pair("gpt2", tokenizer)
    ids, mask = encode(tokenizer, TEXTS, "left")
    kwargs = dict(max_new_tokens=4, min_new_tokens=4, eos_token_id=None)
    cached.generate(ids, mask, **kwargs)
    new_prompt = {"prompt": torch.randn_like(cached.prompt.prompt) * 3}
    cached.prompt.load_state_dict(new_prompt)
    uncached.prompt.load_state_dict(new_prompt)
    assert torch.equal(cached.generate(ids, mask, **kwargs), uncached.generate(ids, mask, **kwargs))


def test_beams_and_returned_sequences(tokenizer):
    cached, uncached = pair("llama", tokenizer)
    ids, mask = encode(tokenizer, TEXTS[:2], "left")
    for kwargs in [dict(num_beams=3, num_return_sequences=2), dict(num_beams=2)]:
        kwargs.update(max_new_tokens=4, min_new_tokens=4, eos_token_id=None)
        got = cached.generate(ids, mask, **kwargs)
        assert torch.equal(got, uncached.generate(ids, mask, **kwargs))
    torch.manual_seed(0)
    sampled = cached.generate(ids, mask, do_sample=True, num_return_sequences=3, max_new_tokens=3)
    assert sampled.shape[0] == 6


@pytest.mark.parametrize("how", ["kwargs", "generation_config"])
def test_beams_from_a_generation_config(tokenizer, how):
    """The beam count may come in a GenerationConfig: the shared cache must be expanded to it too."""
    from transformers import GenerationConfig

    cached, uncached = pair("llama", tokenizer)
    ids, mask = encode(tokenizer, TEXTS, "left")
    settings = dict(num_beams=3, num_return_sequences=2, max_new_tokens=4, do_sample=False, eos_token_id=None,
                    pad_token_id=0)
    kwargs = settings if how == "kwargs" else {"generation_config": GenerationConfig(**settings)}
    got = cached.generate(ids, mask, **kwargs)
    want = uncached.generate(ids, mask, **kwargs)
    assert got.shape == (2 * len(TEXTS), 4)
    assert torch.equal(got, want)


def skip_unless_lookup_from_embeddings(base):
    """Older transformers (5.0) cannot run prompt-lookup decoding from inputs_embeds at all (a shape error
    inside generate, on the bare model): nothing of ours to test there."""
    embeds = base.get_input_embeddings()(torch.tensor([[5, 6, 7, 5, 6]]))  # (1, 5, D)
    try:
        base.generate(inputs_embeds=embeds, max_new_tokens=3, prompt_lookup_num_tokens=2, pad_token_id=0)
    except (RuntimeError, IndexError) as e:  # the shapes differ by version: what matters is that it fails
        pytest.skip(f"this transformers cannot decode with prompt lookup from embeddings ({str(e)[:80]})")


def test_prompt_lookup_decoding_equals_greedy(tokenizer):
    """Candidate decoding feeds the whole input again at its first step: the shared prompt cache must not
    be handed to it (the prompt would count twice). Prompt lookup is greedy, so it equals plain greedy."""
    cached, uncached = pair("llama", tokenizer)
    skip_unless_lookup_from_embeddings(cached.base)
    ids, mask = encode(tokenizer, ["the cat sat on the mat the cat sat on the mat"], "left")
    common = dict(max_new_tokens=10, min_new_tokens=10, eos_token_id=None, pad_token_id=0)
    want = uncached.generate(ids, mask, **common)
    assert torch.equal(cached.generate(ids, mask, prompt_lookup_num_tokens=3, **common), want)
    assert torch.equal(uncached.generate(ids, mask, prompt_lookup_num_tokens=3, **common), want)


def test_model_generation_config_beams_with_a_passed_config(tokenizer):
    """A setting the passed GenerationConfig leaves unset comes from the model's own generation config,
    as in `generate`: here num_beams = 2, which the shared cache must be expanded to."""
    from transformers import GenerationConfig

    cached, uncached = pair("llama", tokenizer)
    cached.base.generation_config.num_beams = 2
    ids, mask = encode(tokenizer, TEXTS, "left")
    config = GenerationConfig(max_new_tokens=3, eos_token_id=None, pad_token_id=0)
    try:
        got = cached.generate(ids, mask, generation_config=config)
        want = uncached.generate(ids, mask, generation_config=config)
    finally:
        cached.base.generation_config.num_beams = 1
    assert torch.equal(got, want)


@pytest.mark.parametrize("how", ["kwargs", "generation_config"])
def test_a_callers_max_length_is_kept(tokenizer, how):
    from transformers import GenerationConfig

    cached, _ = pair("llama", tokenizer)
    ids, mask = encode(tokenizer, TEXTS, "left")
    settings = dict(max_length=ids.shape[1] + 4, min_new_tokens=1, eos_token_id=None, pad_token_id=0)
    kwargs = settings if how == "kwargs" else {"generation_config": GenerationConfig(**settings)}
    assert cached.generate(ids, mask, **kwargs).shape == (len(TEXTS), 4)  # not our default of 20
