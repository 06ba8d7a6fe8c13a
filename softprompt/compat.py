"""What differs between the transformers versions we support, in one place (DESIGN.md §2).

Everything else imports these names instead of spelling a version-dependent fact itself. Facts are
read from what the installed library *does* (its output classes, a model's behaviour on a probe), not
from a parameter name in `inspect.signature` alone, which a renaming decorator can hide or fake.

- The key/value cache argument and output: transformers 5.24 renamed `past_key_values` to `cache`
  (forward argument, `generate` argument and the `ModelOutput` attribute); the old keyword still works
  there, deprecated, and is announced for removal in 5.40; this module makes that removal harmless (pyproject.toml caps
  transformers below 6, where generate's deprecated spellings go too).
  `CACHE_ARG` is the spelling this transformers' own outputs use.
- Reading attention probabilities from chosen layers (the attention selector): every supported
  transformers (5.0 to 5.24) dispatches attention through `AttentionInterface` by
  `config._attn_implementation` and builds masks through `AttentionMaskInterface`; `attention_capture`
  registers one function under its own name in both. Whether a model dispatches that way is checked by
  behaviour (the hook must run once per layer), and a test compares it with eager attention's maps on the
  lowest and the newest versions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import torch
from torch import nn


@functools.cache
def cache_arg() -> str:
    """"cache" or "past_key_values": the name under which this transformers passes and returns the
    key/value cache, read off its causal-LM output class (the renaming touched both together)."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    fields = {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
    return "cache" if "cache" in fields else "past_key_values"


CACHE_ARG = cache_arg()


def with_cache(cache) -> dict:
    """`{CACHE_ARG: cache}`, to splat into a forward or `generate` call."""
    return {CACHE_ARG: cache}


def output_cache(out):
    """The cache a forward returned, under either spelling (None when it returned none)."""
    for name in (CACHE_ARG, "cache", "past_key_values"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    return None


def passed_cache(forward_kwargs: dict):
    """The cache a forward call was given, under either spelling (None when it was given none)."""
    for name in (CACHE_ARG, "cache", "past_key_values"):
        if forward_kwargs.get(name) is not None:
            return forward_kwargs[name]
    return None


def new_cache():
    from transformers import DynamicCache

    return DynamicCache()


def cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values) of a filled DynamicCache, each (B, heads, T, head_dim)."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def cache_from_layers(kv: list[tuple[torch.Tensor, torch.Tensor]]):
    """A DynamicCache holding the given per-layer (keys, values) as they are (no copy), ready for the
    model's own `update` to append to."""
    from transformers.cache_utils import DynamicLayer

    cache = new_cache()
    for keys, values in kv:
        layer = DynamicLayer()
        layer.lazy_initialization(keys, values)  # dtype/device bookkeeping; the tensors are set below
        layer.keys, layer.values = keys, values
        cache.layers.append(layer)
    return cache


def fills_cache(body: nn.Module, embeds: torch.Tensor) -> bool:
    """Whether `body` takes a cache through CACHE_ARG and fills it (a behavioural check, no signature
    reading): one no-grad pass over `embeds` (1, T, D) must leave T positions in the cache."""
    cache = new_cache()
    try:
        with torch.no_grad():
            body(inputs_embeds=embeds, use_cache=True, **with_cache(cache))
        return cache.get_seq_length() == embeds.shape[1]
    except Exception:  # noqa: BLE001 - any failure means "does not take our cache", which is the answer
        return False


@functools.cache
def bitsandbytes_on_cpu() -> bool:
    """Whether this bitsandbytes quantizes and multiplies on CPU (tested: 0.50 does): one 4-bit layer is
    built and run on a tiny input, with its notes silenced, rather than trusting a version number."""
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # see loading.quantization_config
    try:
        import bitsandbytes as bnb

        layer = bnb.nn.Linear4bit(64, 64, bias=False, quant_type="nf4", compute_dtype=torch.float32)
        layer = layer.to("cpu")
        layer.weight = bnb.nn.Params4bit(torch.randn(64, 64), requires_grad=False, quant_type="nf4").to("cpu")
        return bool(torch.isfinite(layer(torch.randn(2, 64))).all())
    except Exception:  # any failure means "not on CPU": the caller names the fix
        return False


def keep_4bit_differentiable(model: nn.Module) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel; returns the layers changed.

    bitsandbytes 0.50 repacks a `Linear4bit`'s weight the first time it runs in eval mode on a CPU with AVX512-BF16
    on an input that needs no grad (an eval pass, or the shared prefix's token rows), and from then on
    multiplies with `gemv_4bit`, which has no autograd kernel: gradients to the prompt are silently dropped
    (torch only warns), and layers narrower than 64 inputs fail to repack. The flag it checks is read off the
    modules that have it, so a bitsandbytes without the repacking is left as it is."""
    changed = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", None):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


# ---------------------------------------------------------------------------------------------------
# Reading attention probabilities from a few layers without eager attention everywhere

CAPTURE = "softprompt_capture"  # the attention implementation name registered while a capture is open
_capture_hook = None


def _capturing_attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA's output, after showing the hook this layer's post-RoPE query (B, H, T, hd), keys (B, Hkv, S, hd),
    mask (bool, True = attend; float, additive; or None) and keyword arguments (scaling, softcap, ...)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if _capture_hook is not None:
        _capture_hook(module, query, key, attention_mask, kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


@contextlib.contextmanager
def attention_capture(base: nn.Module, hook):
    """While open, every attention layer of `base` that dispatches through transformers' `AttentionInterface`
    computes with SDPA (SDPA's boolean masks) and calls `hook(module, query, key, mask, kwargs)` first, so a
    caller can read the attention probabilities of the layers it wants without `output_attentions`, which
    forces eager attention and materialises every layer's map. The model's implementation is switched by
    name for the duration (config._attn_implementation, set on sub-configs too) and restored after. Whether a
    model dispatches this way is behaviour the caller checks (the hook is called once per layer)."""
    global _capture_hook
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(CAPTURE, _capturing_attention)
    AttentionMaskInterface.register(CAPTURE, sdpa_mask)
    configs = _config_tree(base.config)
    # each config's own choice, restored one by one: the setter would give every sub-config the top one
    before = [(c, c._attn_implementation) for c in configs]
    previous, _capture_hook = _capture_hook, hook  # a capture opened inside another gives the outer one back
    base.config._attn_implementation = CAPTURE
    try:
        yield
    finally:
        for config, value in before:
            config._attn_implementation_internal = value
        _capture_hook = previous


def _config_tree(config) -> list:
    """A config and its sub-configs (e.g. a multimodal model's text and vision configs), recursively."""
    found = [config]
    for key in getattr(config, "sub_configs", None) or ():
        sub = getattr(config, key, None)
        if sub is not None and hasattr(sub, "_attn_implementation"):
            found += _config_tree(sub)
    return found
