"""Tiny real models and a real trained tokenizer, built from configs: no network, no GPU."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CORPUS = [
    "the cat sat on the mat", "a dog ran in the park", "translate: chat -> cat",
    "red green blue yellow", "one two three four five six seven", "hello world, how are you?",
    "apple = red", "banana = yellow", "sky = blue", "grass = green",
] * 20


def build_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers, decoders
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(path)
    return fast


def tiny_config(family: str, vocab_size: int):
    from transformers import (BertConfig, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config,
                              T5Config)

    common = dict(vocab_size=vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family == "llama":
        return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=256, **common)
    if family == "qwen2":
        return Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=256, **common)
    if family == "mistral":
        return MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=256, sliding_window=None, **common)
    if family == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256, **common)
    if family == "t5":
        return T5Config(d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4, decoder_start_token_id=0,
                        **common)
    if family == "bert":
        return BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=256, vocab_size=vocab_size, pad_token_id=0)
    if family in DECODER_FAMILIES:
        from transformers import AutoConfig

        return AutoConfig.for_model(family, **common, **DECODER_FAMILIES[family])
    raise ValueError(family)


# More decoder-only families (HF model_type -> tiny sizes), for parity tests across architectures.
_ROPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=8, max_position_embeddings=256)
DECODER_FAMILIES = {
    **{name: _ROPE for name in ("qwen3", "phi3", "gemma", "starcoder2", "olmo2", "granite", "stablelm", "cohere",
                                "smollm3", "phi")},
    "gemma2": dict(_ROPE, sliding_window=4),  # sliding layers narrower than prompt + input
    "gemma3_text": dict(_ROPE, sliding_window=4),
    "mixtral": dict(_ROPE, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(_ROPE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=32),
    "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=256),
    "gpt_bigcode": dict(n_embd=32, n_layer=2, n_head=4, n_positions=256),
    "gptj": dict(n_embd=32, n_layer=2, n_head=4, n_positions=256, rotary_dim=4),
    "opt": dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256,
                word_embed_proj_dim=32),
    "falcon": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, new_decoder_architecture=True,
                   num_kv_heads=2),
    "jamba": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),  # hybrid attention + Mamba: no shared prefix
}


def build_model(family: str, vocab_size: int, seed: int = 0):
    from transformers import AutoModelForCausalLM, BertForMaskedLM, T5ForConditionalGeneration

    torch.manual_seed(seed)
    cfg = tiny_config(family, vocab_size)
    if family == "t5":
        model = T5ForConditionalGeneration(cfg)
    elif family == "bert":
        model = BertForMaskedLM(cfg)
    else:
        model = AutoModelForCausalLM.from_config(cfg)
    return model.eval()


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory, tokenizer):
    """A tiny Llama and the tokenizer saved in one dir, loadable by path like a hub model."""

    def make(family: str = "llama"):
        path = tmp_path_factory.mktemp(f"{family}-model")
        build_model(family, len(tokenizer)).save_pretrained(path)
        tokenizer.save_pretrained(path)
        return str(path)

    cache = {}
    return lambda family="llama": cache.setdefault(family, make(family))
