"""Loading a frozen base: one `ModelConfig` -> (model, tokenizer, kind).

The config says everything needed to load the same base again (name, revision, dtype, remote code, the
quantization it runs under, where it is placed), and the adapter records it (`adapter.py`), so
`SoftPromptModel.from_adapter` finds a quantized or compressed base as it was trained on. A base
compressed by another tool (llmcompressor writes `quantization_config` into config.json) loads
through transformers' own support for that format; bitsandbytes quantizes at load time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from softprompt.errors import ConfigError, SoftPromptError, gist

DEMO_MODEL = Path(__file__).parent / "data" / "demo" / "model"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
KINDS = ("auto", "causal", "seq2seq", "encoder")
# Quantization applied while loading (bitsandbytes; needs its package and, for most kernels, a GPU).
QUANTIZATIONS = ("none", "bnb-8bit", "bnb-4bit")
ENCODER_ONLY = frozenset({"bert", "roberta", "xlm-roberta", "deberta", "deberta-v2", "electra", "distilbert",
                          "camembert", "modernbert"})


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = "demo"  # hub id, local dir, or "demo" for the embedded default model
    kind: str = "auto"  # auto | causal | seq2seq | encoder
    dtype: str = "float32"  # dtype the frozen base is loaded in (compute dtype under quantization)
    revision: str | None = None
    trust_remote_code: bool = False
    quantization: str = "none"  # none | bnb-8bit | bnb-4bit: quantize the base while loading it
    device_map: str | None = None  # passed to from_pretrained (e.g. "auto"); None: the training loop places it


def resolve_model_path(name_or_path: str) -> str:
    return str(DEMO_MODEL) if name_or_path == "demo" else name_or_path


def detect_kind(config) -> str:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and config.model_type not in ENCODER_ONLY:
        return "causal"
    return "encoder"


def load_base(spec: ModelConfig | str, **changes):
    """(model, tokenizer, kind) for `spec` (a `ModelConfig`, or a name with `changes` as its fields). The model
    is frozen; a tokenizer without a pad token pads with eos. "demo" is the embedded default model.

    A hub id loads from its snapshot dir in the local Hugging Face cache when it is whole, as a local dir: no
    network at all (so a branch's newer revision is not fetched while an older one is cached). Otherwise only
    once the hub answers: offline mode or an unreachable hub is one clear error at once, not ~30 s of retries.
    (A hub id with local_files_only=True is not enough: transformers 5.24 still looks up adapter_config.json on
    the hub, with retries, in `AutoModel*.from_pretrained`.)"""
    from softprompt.loading_checks import check_hub_model, check_model_dir, is_hub_id

    spec = ModelConfig(name_or_path=spec) if isinstance(spec, str) else spec
    spec = replace(spec, **changes) if changes else spec
    check_model_dir(spec.name_or_path, spec.kind)  # a local dir missing weights/tokenizer, or of another kind
    # a hub id: its whole cached snapshot, or None once the hub answers (else one error, at once)
    snapshot = check_hub_model(spec.name_or_path, spec.revision) if is_hub_id(spec.name_or_path) else None
    return _load(spec, snapshot)


def _load(spec: ModelConfig, path: str | None = None):
    """Load `spec` from `path` (its cached snapshot dir), or from its name (resolved, "demo" included)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    path = path or resolve_model_path(spec.name_or_path)
    common = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(path, **common)
    except (OSError, ValueError) as e:
        raise SoftPromptError(
            f"model.name_or_path: cannot load {spec.name_or_path!r} ({gist(e)}); "
            "give a local model directory or a hub id reachable from this machine"
        ) from None
    kind = detect_kind(config) if spec.kind == "auto" else spec.kind
    auto = {"causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM, "encoder": AutoModel}[kind]
    extra = {"quantization_config": quantization_config(spec)} if spec.quantization != "none" else {}
    if spec.device_map is not None:
        extra["device_map"] = spec.device_map
    model = auto.from_pretrained(path, dtype=DTYPES[spec.dtype], **common, **extra)
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(path, **common)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, kind


def quantization_config(spec: ModelConfig):
    """transformers' BitsAndBytesConfig for `spec.quantization`; one clear error where it cannot run."""
    import importlib.util

    if spec.quantization not in QUANTIZATIONS:
        raise ConfigError(f"model.quantization: {spec.quantization!r} is not valid; choose one of {list(QUANTIZATIONS)}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise SoftPromptError(f"model.quantization: {spec.quantization} needs the bitsandbytes package; install "
                              "softprompt[quantize] (pip install 'bitsandbytes>=0.45'), or set model.quantization: none")
    if not torch.cuda.is_available():
        raise SoftPromptError(f"model.quantization: {spec.quantization} runs bitsandbytes kernels on a GPU and none is "
                              "visible here; load the base unquantized (model.quantization: none) on this machine")
    from transformers import BitsAndBytesConfig

    if spec.quantization == "bnb-8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    # NF4 with the compute dtype of the config (QLoRA's setting, Dettmers et al. 2023)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=DTYPES[spec.dtype])
