"""Cheap checks before anything loads a base: what `from_pretrained` would otherwise report with a
traceback (or not at all), or only after ~30 s of retries against an unreachable hub.

    check_model_dir(cfg.model.name_or_path, cfg.model.kind)   # a local dir: raises SoftPromptError naming the fix
    snapshot = check_hub_model(name, revision)               # a hub id: its cached snapshot dir, or None once the
                                                              # hub answers; raises at once when offline mode is
                                                              # on or the hub does not answer
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from softprompt.errors import SoftPromptError, gist

WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")


OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
TRUE_VALUES = ("1", "ON", "YES", "TRUE")  # what huggingface_hub reads as true
# One HEAD to the hub's endpoint. transformers retries an unreachable hub with backoff for ~25 s per file
# before it says so; a reachable hub answers a HEAD in well under a second, even from far away.
HUB_TIMEOUT_S = 3.0
BUNDLED = ("demo", "demo-large")  # names loading.resolve_model_path maps to local dirs


def _looks_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\")) or Path(name).exists() or name.count("/") > 1


def is_hub_id(name_or_path: str) -> bool:
    """Whether `name_or_path` names a hub model (not a BUNDLED name, not a local path). Call after `check_model_dir`."""
    return name_or_path not in BUNDLED and not _looks_local(name_or_path)


def hub_name(name_or_path: str | None) -> str | None:
    """The hub id a base came from: the id itself, or the one a Hugging Face cache snapshot dir encodes
    (`.../models--ORG--NAME/snapshots/REV`, where transformers leaves `config._name_or_path` after loading an id
    from the cache); None for any other local dir or a bundled name."""
    if not name_or_path:
        return None
    for part in Path(name_or_path).parts:
        if part.startswith("models--") and part.count("--") >= 2:
            return "/".join(part.split("--")[1:])
    return name_or_path if is_hub_id(name_or_path) else None


def check_model_dir(name_or_path: str, kind: str = "auto", where: str = "model.name_or_path") -> None:
    """A local model dir has a readable config.json, weights whose safetensors headers are whole, tokenizer
    files, and is of `kind` (unless auto). Reads headers only: no tensors, no model."""
    if name_or_path in BUNDLED or not _looks_local(name_or_path):
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


# ---------------------------------------------------------------------------------------------------
# Hub ids


def offline_setting() -> tuple[str, str] | None:
    """(the env var, how it is set) when Hugging Face's offline mode is on, else None. The env is read now,
    and huggingface_hub's own flag (the env when it was imported) counts too: it refuses every request then."""
    from huggingface_hub import constants

    for var in OFFLINE_VARS:
        if os.environ.get(var, "").upper() in TRUE_VALUES:
            return var, f"{var}={os.environ[var]}"
    return ("HF_HUB_OFFLINE", "HF_HUB_OFFLINE, set when huggingface_hub was imported") if constants.HF_HUB_OFFLINE else None


def cached_snapshot(name: str, revision: str | None) -> str | None:
    """The local Hugging Face cache's snapshot dir of `name` at `revision` (main when None) when it holds the
    model's config.json, else None. Reads the cache only."""
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(name, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - an id the hub would refuse (HFValidationError) is not cached either
        return None
    return str(Path(config).parent) if isinstance(config, str) else None


def _whole(snapshot: Path) -> bool:
    """A cached snapshot has weights and tokenizer files, not only the config.json a failed download left."""
    index = next((snapshot / f for f in WEIGHTS if f.endswith(".index.json") and (snapshot / f).is_file()), None)
    if index is not None:  # a sharded checkpoint: every shard its index names
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        weights = all((snapshot / shard).is_file() for shard in shards)
    else:
        weights = any((snapshot / f).is_file() for f in WEIGHTS)
    return weights and any((snapshot / f).is_file() for f in TOKENIZER)


def hub_unreachable(timeout: float | None = None) -> str | None:
    """Why the hub's endpoint (HF_ENDPOINT) does not answer within `timeout` seconds (HUB_TIMEOUT_S when None),
    or None when it does. Any HTTP answer counts: the files' own errors are from_pretrained's to report.
    huggingface_hub's client is the one from_pretrained uses (its proxies and headers)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    timeout = HUB_TIMEOUT_S if timeout is None else timeout
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - the client's transport errors: DNS, refused, timeout, TLS, proxy
        return gist(e) if str(e).strip() else f"no answer within {timeout:g} s"
    return None


def check_hub_model(name: str, revision: str | None = None, where: str = "model.name_or_path") -> str | None:
    """For a hub id: its snapshot dir when the local cache holds it whole (load from there: no network at all).
    Otherwise, fail at once when offline mode is on or the hub does not answer within HUB_TIMEOUT_S, naming the
    model and the fix; return None when the hub answers (from_pretrained downloads it)."""
    snapshot = cached_snapshot(name, revision)
    if snapshot is not None and _whole(Path(snapshot)):
        return snapshot
    require_hub(name, revision, where, partly=snapshot is not None)
    return None


def require_hub(name: str, revision: str | None = None, where: str = "model.name_or_path",
                partly: bool = False) -> None:
    """Raise, naming `name` and the fix, when the hub cannot be used to fetch it: offline mode is on, or the
    hub does not answer within HUB_TIMEOUT_S. `partly`: its config.json is cached but not all its weights or
    tokenizer files."""
    from huggingface_hub import constants

    cached = f"{'only partly' if partly else 'not'} in the local Hugging Face cache" + \
        (f" at revision {revision!r}" if revision else "")
    offline = offline_setting()
    if offline is not None:
        var, setting = offline
        raise SoftPromptError(f"{where}: {name!r} is {cached} and offline mode is on ({setting}); "
                              f"give a local model directory, or unset {var} to download it")
    reason = hub_unreachable()
    if reason is not None:
        raise SoftPromptError(
            f"{where}: cannot load {name!r}: it is {cached} and the hub ({constants.ENDPOINT}) is unreachable from "
            f"this machine ({reason}); give a local model directory, or download it where the hub is reachable and "
            "set HF_HUB_OFFLINE=1 to load it from the cache"
        )
