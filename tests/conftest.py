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
    if family in ENCODER_FAMILIES:
        from transformers import AutoConfig

        return AutoConfig.for_model(family, vocab_size=vocab_size, **ENCODER_FAMILIES[family])
    if family == "bart":
        from transformers import BartConfig

        return BartConfig(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                          decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                          max_position_embeddings=256, decoder_start_token_id=2, forced_eos_token_id=None, **common)
    if family in DECODER_FAMILIES:
        from transformers import AutoConfig

        return AutoConfig.for_model(family.split("-")[0], **common, **DECODER_FAMILIES[family])
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
                  num_key_value_heads=2, use_mamba_kernels=False),  # hybrid attention + Mamba: no shared prefix
    # position schemes beyond plain RoPE; "<model_type>-<variant>" names a variant of a model type
    "llama-dynamic": dict(_ROPE, max_position_embeddings=16,  # dynamic NTK scaling past 16 tokens
                          rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}),
    "phi3-longrope": dict(_ROPE, max_position_embeddings=64, original_max_position_embeddings=16,
                          rope_parameters={"rope_type": "longrope", "short_factor": [1.0] * 4,
                                           "long_factor": [3.0] * 4, "rope_theta": 10000.0}),
    "llama-yarn": dict(_ROPE, rope_parameters={"rope_type": "yarn", "factor": 2.0, "rope_theta": 10000.0,
                                               "original_max_position_embeddings": 128}),
    "mistral-window": dict(_ROPE, sliding_window=4),
    "qwen2-window": dict(_ROPE, sliding_window=4, use_sliding_window=True, max_window_layers=0),
    "cohere2": dict(_ROPE, sliding_window=4, layer_types=["sliding_attention", "full_attention"]),
    "olmo3": dict(_ROPE, sliding_window=4, layer_types=["sliding_attention", "full_attention"]),
    "mixtral-window": dict(_ROPE, num_local_experts=4, num_experts_per_tok=2, sliding_window=4),
    "phi3-window": dict(_ROPE, sliding_window=4),
    "starcoder2-window": dict(_ROPE, sliding_window=4),
    "gpt_neo": dict(hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=256, window_size=4,
                    attention_types=[[["local", "global"], 1]]),  # local attention, learned positions
    "mpt": dict(d_model=32, n_heads=4, n_layers=2, max_seq_len=256),  # ALiBi
    "bloom": dict(hidden_size=32, n_layer=2, n_head=4),  # ALiBi
}
# Encoders (masked-LM heads), each with its own position numbering: BERT/ELECTRA/DistilBERT count
# from 0, RoBERTa/XLM-R from padding_idx + 1 (their default pad id 1: positions start at 2).
_ENC = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256)
ENCODER_FAMILIES = {
    "bert": dict(_ENC, pad_token_id=0),
    "roberta": dict(_ENC, max_position_embeddings=260),
    "xlm-roberta": dict(_ENC, max_position_embeddings=260),
    "electra": dict(_ENC, embedding_size=32, pad_token_id=0),
    "distilbert": dict(dim=32, hidden_dim=64, n_layers=2, n_heads=4, max_position_embeddings=256, pad_token_id=0),
}

# Families where the shared prefix is not exact (or cannot run), and what `auto`'s reason names.
NOT_EXACT = {"jamba": "Jamba", "llama-dynamic": "dynamic", "phi3-longrope": "longrope"}


def build_model(family: str, vocab_size: int, seed: int = 0):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM, BertForMaskedLM

    torch.manual_seed(seed)
    cfg = tiny_config(family, vocab_size)
    if family in ("t5", "bart"):
        model = AutoModelForSeq2SeqLM.from_config(cfg)
    elif family == "bert":
        model = BertForMaskedLM(cfg)
    elif family in ENCODER_FAMILIES:
        model = AutoModelForMaskedLM.from_config(cfg)
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
