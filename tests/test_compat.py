"""The compatibility module reads the installed transformers correctly (runs in both CI version jobs)."""

import logging
import warnings

import torch
import transformers
from packaging.version import Version

from conftest import build_model
from softprompt import compat
from softprompt.layers import PromptEmbedding
from softprompt.model import SoftPromptModel


def test_cache_spelling_follows_the_installed_transformers():
    # 5.24 renamed past_key_values to cache (release notes); the module reads it off the output class
    expected = "cache" if Version(transformers.__version__) >= Version("5.24.0") else "past_key_values"
    assert compat.CACHE_ARG == expected
    base = build_model("llama", 400)
    out = base(input_ids=torch.tensor([[5, 6, 7]]), use_cache=True)
    cache = compat.output_cache(out)
    assert cache is not None and cache.get_seq_length() == 3
    assert len(compat.cache_layers(cache)) == base.config.num_hidden_layers


def test_fills_cache_is_a_behavioural_check():
    base = build_model("llama", 400)
    embeds = base.get_input_embeddings()(torch.tensor([[5, 6]]))  # (1, 2, D)
    assert compat.fills_cache(base.base_model, embeds)

    class IgnoresCache(torch.nn.Module):  # takes any keyword, never touches a cache
        def forward(self, inputs_embeds=None, **kwargs):
            return inputs_embeds

    assert not compat.fills_cache(IgnoresCache(), embeds)


def test_fast_path_uses_no_deprecated_spelling(tokenizer, caplog):
    """Training, evaluation and generate on the shared prefix pass the cache under the current name:
    no deprecation warning from transformers (which would become an error at the announced removal)."""
    base = build_model("llama", len(tokenizer))
    model = SoftPromptModel(base, PromptEmbedding(torch.randn(4, 32)), tokenizer)
    assert model.execution_mode() == "shared_prefix"
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        model(ids, mask, labels=ids).loss.backward()
        model.generate(ids, mask, max_new_tokens=3)
    messages = [str(w.message) for w in seen] + [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "past_key_values" in m or "deprecat" in m.lower()], messages
