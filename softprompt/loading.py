"""Loading a frozen base: one `ModelConfig` -> (model, tokenizer, kind).

The config says everything needed to load the same base again (name, revision, dtype, remote code, the
quantization it runs under, where it is placed), and the adapter records it (`adapter.py`), so
`SoftPromptModel.from_adapter` finds a quantized or compressed base as it was trained on. A base
compressed by another tool (llmcompressor writes `quantization_config` into config.json) loads
through transformers' own support for that format; bitsandbytes quantizes at load time.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from softprompt.errors import ConfigError, SoftPromptError, gist

DEMO_MODEL = Path(__file__).parent / "data" / "demo" / "model"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
KINDS = ("auto", "causal", "seq2seq", "encoder")
# Quantization applied while loading, by bitsandbytes (CPU and GPU): 8-bit (LLM.int8), 4-bit NF4 (bnb-4bit,
# QLoRA's) or 4-bit FP4. Any checkpoint loads this way, a pruned one from `compress.py` included.
QUANTIZATIONS = ("none", "bnb-8bit", "bnb-4bit", "bnb-fp4")
CACHE_ENV = "SOFTPROMPT_CACHE"  # where assets built outside git live (default ~/.cache/softprompt)
ENCODER_ONLY = frozenset({"bert", "roberta", "xlm-roberta", "deberta", "deberta-v2", "electra", "distilbert",
                          "camembert", "modernbert"})


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = "demo"  # hub id, local dir, or "demo" for the embedded default model
    kind: str = "auto"  # auto | causal | seq2seq | encoder
    dtype: str = "float32"  # dtype the frozen base is loaded in (compute dtype under quantization)
    revision: str | None = None
    trust_remote_code: bool = False
    quantization: str = "none"  # none | bnb-8bit | bnb-4bit (NF4) | bnb-fp4: quantize the base while loading it
    device_map: str | None = None  # passed to from_pretrained (e.g. "auto"); None: the training loop places it


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "softprompt")


def demo_large_dir() -> Path:
    """Where `scripts/build_demo_large.py` puts the larger demo model, its text and its task."""
    return cache_dir() / "demo-large"


def resolve_model_path(name_or_path: str) -> str:
    """"demo": the embedded model; "demo-large": the larger one built outside git; anything else as given."""
    if name_or_path == "demo":
        return str(DEMO_MODEL)
    if name_or_path == "demo-large":
        path = demo_large_dir() / "model"
        if not (path / "config.json").is_file():
            raise SoftPromptError(f"model.name_or_path: demo-large is not built here ({path}); build it once with "
                                  "`python scripts/build_demo_large.py` (about 10 minutes on 2 CPU cores)")
        return str(path)
    return name_or_path


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
    if spec.quantization in ("bnb-4bit", "bnb-fp4"):
        from softprompt import compat

        compat.keep_4bit_differentiable(model)
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
                              "softprompt[quantize] (pip install 'bitsandbytes>=0.50'), or set model.quantization: none")
    from softprompt import compat

    if not torch.cuda.is_available() and not compat.bitsandbytes_on_cpu():
        raise SoftPromptError(f"model.quantization: {spec.quantization} needs a GPU with this bitsandbytes (CPU runs "
                              "are tested with 0.50); upgrade bitsandbytes, or load the base unquantized (model.quantization: none)")
    # Two notes bitsandbytes logs are noise here: its CPU 4-bit kernel falls back to the built-in one (correct,
    # slower) without the optional `kernels` package, and 8-bit says once per layer call that it casts inputs.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from transformers import BitsAndBytesConfig

    if spec.quantization == "bnb-8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    # NF4 (QLoRA's data type, Dettmers et al. 2023) or FP4, computing in the config's dtype
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4" if spec.quantization == "bnb-4bit" else "fp4",
                              bnb_4bit_compute_dtype=DTYPES[spec.dtype])
