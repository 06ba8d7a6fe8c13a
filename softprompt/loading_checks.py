"""Cheap checks of a local model dir before anything loads it: what `from_pretrained` would otherwise
report with a traceback (or not at all). Hub ids (not a local path) are left to `load_base`.

    check_model_dir(cfg.model.name_or_path, cfg.model.kind)   # raises SoftPromptError naming the fix
"""

from __future__ import annotations

import json
from pathlib import Path

from softprompt.errors import SoftPromptError, gist

WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")


def _looks_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\")) or Path(name).exists() or name.count("/") > 1


def check_model_dir(name_or_path: str, kind: str = "auto", where: str = "model.name_or_path") -> None:
    """A local model dir has a readable config.json, weights whose safetensors headers are whole, tokenizer
    files, and is of `kind` (unless auto). Reads headers only: no tensors, no model."""
    if name_or_path == "demo" or not _looks_local(name_or_path):
        return
    path = Path(name_or_path).expanduser()
    fix = "give a model directory saved with save_pretrained (model and tokenizer), or a hub id"
    if not path.exists():
        raise SoftPromptError(f"{where}: cannot load {name_or_path!r} (no such directory); {fix}")
    if not path.is_dir():
        raise SoftPromptError(f"{where}: cannot load {name_or_path!r} (it is a file, not a model directory); {fix}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise SoftPromptError(f"{where}: cannot load {name_or_path!r} (no config.json); {fix}")
    try:
        config = json.loads(config_file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SoftPromptError(f"{where}: cannot load {name_or_path!r} (config.json is not valid JSON: "
                              f"{getattr(e, 'msg', None) or e.reason}); {fix}") from None
    if not isinstance(config, dict):
        raise SoftPromptError(f"{where}: cannot load {name_or_path!r} (config.json is not a JSON object); {fix}")
    weights = [f for f in WEIGHTS if (path / f).is_file()] + sorted(p.name for p in path.glob("model-*.safetensors"))
    if not weights:
        raise SoftPromptError(f"{where}: {name_or_path!r} has no weights (no model.safetensors or pytorch_model.bin); "
                              "save the model there with model.save_pretrained")
    for name in weights:
        if name.endswith(".safetensors"):
            _check_safetensors(path / name, where)
    if not any((path / f).is_file() for f in TOKENIZER):
        raise SoftPromptError(f"{where}: {name_or_path!r} has no tokenizer files (tokenizer.json, tokenizer_config.json, "
                              "...); save the tokenizer there with tokenizer.save_pretrained")
    if kind != "auto":
        _check_kind(config, kind, name_or_path)


def _check_safetensors(file: Path, where: str) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(file), "pt"):
            pass
    except Exception as e:  # noqa: BLE001 - SafetensorError: truncated, empty, not safetensors
        reason = gist(e)
        raise SoftPromptError(f"{where}: {file.name} in {str(file.parent)!r} is not a readable safetensors file "
                              f"({reason}); it may be truncated: save or download the model again") from None


def _check_kind(config: dict, kind: str, name: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.get("model_type")
    seq2seq = bool(config.get("is_encoder_decoder"))
    actual = "an encoder-decoder (seq2seq)" if seq2seq else "a decoder-only or encoder-only"
    if (kind == "seq2seq") != seq2seq or (kind == "causal" and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        raise SoftPromptError(f"model.kind: {kind!r} does not fit {name!r}, {actual} {model_type!r} model; "
                              "set model.kind to auto (detected from the model) or to the model's kind")
