"""Adapter files: written from a model's components, read back into components.

An adapter dir is at once:
- a strict PEFT `PROMPT_TUNING` adapter (`adapter_config.json` with only PEFT's keys,
  `adapter_model.safetensors` holding `prompt_embeddings` (p, d) fp32, `num_transformer_submodules: 1`)
  that `peft.PeftModel.from_pretrained` loads, wherever the prompt source has a PEFT view (a bank has
  none, and writes one such dir per member under `members/prompt_KK/` instead);
- our sidecar `softprompt.json`: the base (its name as given, "demo" included, as `base_model`; how to load it again as
  `base_loading`), kind, a probe of the base's embedding table so a wrong base is caught, and each
  component's `describe()`; `softprompt_extra.safetensors` holds the component state PEFT cannot
  express (DePT's A and B, a bank's prompts and its selector's keys, a head);
- a serving bundle `serving/` for engines that take prompt embeddings (vLLM `prompt_embeds`): the
  prompt source's serving view in the base's dtype and the metadata a client needs;
- a model card `README.md` (model_card.py) from the sidecar: what it is, its training, metrics, how to load it.
Every component describes itself; nothing here branches on a method. Writes are atomic (temp dir +
rename) and every file gets the mode a plain `open` gives (0644, dirs 0755, under the usual umask);
reading never unpickles, and every file is checked before any model loads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from softprompt import model_card
from softprompt.checkpoint import atomic_dir, commit, save_tensors
from softprompt.errors import SoftPromptError, gist
from softprompt.loading import ModelConfig, resolve_model_path

log = logging.getLogger(__name__)

SIDECAR = "softprompt.json"
EXTRA = "softprompt_extra.safetensors"
FORMAT = 2  # 1: prompt + optional "offset" (before prompt sources and heads were components)
PEFT_TASK = {"causal": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM", "encoder": "FEATURE_EXTRACTION"}
FIX = "re-export the adapter, or point at a run's final/ or a PEFT prompt-tuning dir"
PEFT_IMPORTS = ("PROMPT_TUNING", "P_TUNING")  # PEFT adapters whose file is a (p, d) prompt


def loadable_base(name: str) -> str:
    """The base as PEFT or a serving engine can load it: "demo" is our alias for the embedded model, so its
    absolute path inside the installed package; a local dir made absolute (it loads from any working dir);
    a hub id as it is. The sidecar keeps the name as given, so `from_adapter` finds the embedded model
    wherever softprompt is installed, even when this path no longer exists."""
    path = Path(resolve_model_path(name)).expanduser()
    return str(path.resolve()) if name and path.is_dir() else name


def compression_of(name: str) -> dict | None:
    """The parts of a compressed base's record (compress.py) that identify it: method, settings, its weights'
    hash and its source. None for a base `softprompt compress` did not write."""
    from softprompt.compress import read_record

    record = read_record(resolve_model_path(name)) if name and Path(resolve_model_path(name)).is_dir() else None
    if record is None:
        return None
    return {k: record.get(k) for k in ("method", "config", "measured", "weights_sha256", "source")}


def check_compression(saved: "SavedAdapter", where: str) -> None:
    """Refuse a compressed base that is no longer the one the adapter was trained on (re-compressed in place
    with other settings): the recorded weights hash differs from the base dir's record."""
    recorded = saved.meta.get("compression")
    if not recorded:
        return
    now = compression_of(saved.base_config.name_or_path)
    if now is None or now.get("weights_sha256") != recorded.get("weights_sha256"):
        what = "has no compression record" if now is None else f"holds another compression ({now.get('method')})"
        raise SoftPromptError(f"adapter: {where} was trained on {saved.base_config.name_or_path!r} compressed with "
                              f"{recorded.get('method')} (weights {recorded.get('weights_sha256')}), and that dir now "
                              f"{what}; compress it again the same way, or pass base=... explicitly")


def embedding_probe(base) -> list[float]:
    """Norms of the first 8 rows of the input embedding table: tells bases apart, survives dtype casts."""
    table = base.get_input_embeddings().weight
    return [round(float(x), 4) for x in table[:8].detach().float().norm(dim=1)]


# ---------------------------------------------------------------------------------------------------
# Writing


def save(model, out_dir: str | Path, **meta) -> Path:
    """Write `model`'s prompt source and head (and what loads its base) as an adapter dir."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_dir(out)
    source, head = model.prompt, model.head
    state = {k: v.detach().float().cpu().contiguous() for k, v in source.state_dict().items()}
    peft_key, caveat = source.peft_view()
    ignored = [caveat] if caveat else []  # what stock PEFT would miss, each said once
    # a head in the layout of transformers' own classification head (score_head.py) goes to PEFT too, as a
    # SEQ_CLS adapter's modules_to_save; any other head is ours alone
    head_view = head.peft_view() if head is not None and hasattr(head, "peft_view") else None
    if head is not None and (head_view is None or peft_key is None):
        ignored.append(f"the trained {head.describe()['type']} head (PEFT's prompt tuning has no place for it)")
    if peft_key is not None:
        _write_peft(model, state.pop(peft_key), tmp, head_view)
    members = source.peft_members() if hasattr(source, "peft_members") else None
    if members is not None:  # several prompts (a bank): each as a PEFT adapter of its own, members/prompt_KK/
        for k, member in enumerate(members):
            (tmp / "members" / f"prompt_{k:02d}").mkdir(parents=True)
            _write_peft(model, member.contiguous(), tmp / "members" / f"prompt_{k:02d}", head_view)
    extra = {f"prompt.{k}": v for k, v in state.items()}
    if head is not None:  # kept here even when PEFT's file holds it too: our loader reads heads from one place
        extra.update({f"head.{k}": v.detach().float().cpu().contiguous() for k, v in head.state_dict().items()})
    selector = getattr(model, "selector", None)
    if selector is not None:
        extra.update({f"selector.{k}": v.detach().float().cpu().contiguous() for k, v in selector.state_dict().items()})
        ignored.append(f"the {selector.describe()['type']} selector")
    if extra:
        save_tensors(extra, tmp / EXTRA)
    loading = {k: v for k, v in dataclasses.asdict(model.base_config).items() if k not in ("name_or_path", "kind")}
    ignored += _peft_ignores_otherwise(model, loading)
    if ignored and (peft_key is not None or members is not None):
        log.warning("%s: stock PEFT ignores %s, which softprompt.json and softprompt_extra.safetensors hold; load it "
                    "with SoftPromptModel.from_adapter for the trained outputs", out, "; ".join(ignored))
    sidecar = {
        "format": FORMAT,
        "base_model": model.base_name,
        "base_loading": loading,  # with base_model and kind: the ModelConfig that loads this base again
        "kind": model.kind,
        "num_virtual_tokens": source.num_virtual_tokens,
        "token_dim": source.dim,
        "base_probe": getattr(model, "base_probe", None) or embedding_probe(model.base),
        # the probe reads the first rows only
        "base_vocab_size": getattr(model, "base_vocab_size", None) or model.base.get_input_embeddings().weight.shape[0],
        "base_model_type": model.base.config.model_type,  # the architecture: another one is refused by name
        "prompt": source.describe(),
        "peft_tensor": peft_key,  # which prompt state tensor adapter_model.safetensors holds, or null
        "peft_ignores": ignored,  # what a stock PEFT load of this dir misses (the model card says it too)
        "peft_head": head_view[0] if head_view is not None and peft_key is not None else None,  # PEFT's modules_to_save
        "head": head.describe() if head is not None else None,
        "selector": selector.describe() if selector is not None else None,  # a bank's per-row choice (selectors/)
        "decision": model.decision,  # the objective's fitted decision rule (per-label thresholds), or null
        "compression": compression_of(model.base_name),  # how a compressed base was made (compress.py), or null
        "config": model.run_config,  # the run that trained it (labels, template), when known; meta may say
        **meta,
    }
    (tmp / SIDECAR).write_text(json.dumps(sidecar, indent=2, default=str))
    _write_serving(model, tmp / "serving")
    files = sorted(str(f.relative_to(tmp)) for f in tmp.rglob("*") if f.is_file())
    card = model_card.render(json.loads(json.dumps(sidecar, default=str)), files, model.trainable_parameters())
    (tmp / "README.md").write_text(card)
    return commit(tmp, out)


def _peft_ignores_otherwise(model, loading: dict) -> list[str]:
    """What else a PEFT load misses: the fitted decision rule, and how the base must be loaded (PEFT loads the
    base as its files are: a load-time quantization is not applied)."""
    missed = []
    if model.decision:
        missed.append("the fitted per-label thresholds (PEFT gives raw scores)")
    if loading.get("quantization", "none") != "none":
        missed.append(f"the base's load-time quantization ({loading['quantization']}; pass PEFT's base a "
                      "quantization_config to match)")
    return missed


def _write_peft(model, prompt: torch.Tensor, out: Path, head_view: tuple[str, dict] | None = None) -> None:
    """A PEFT PROMPT_TUNING dir holding `prompt` (p, d); with `head_view` (module name, tensors) a SEQ_CLS one
    whose head PEFT loads through modules_to_save, under PEFT's own key `base_model.<module>.<param>`."""
    import peft

    tensors = {"prompt_embeddings": prompt}  # (p, d)
    if head_view is not None:
        module, params = head_view
        tensors.update({f"base_model.{module}.{name}": value for name, value in params.items()})
    save_tensors(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    text_cfg = model.base.config.get_text_config()
    peft_cfg = {
        "auto_mapping": None,
        "base_model_name_or_path": loadable_base(model.base_name),  # AutoPeftModel* loads the base from here
        "inference_mode": True,
        "modules_to_save": [head_view[0]] if head_view is not None else None,
        "num_attention_heads": getattr(text_cfg, "num_attention_heads", None),
        "num_layers": getattr(text_cfg, "num_hidden_layers", None),
        "num_transformer_submodules": 1,
        "num_virtual_tokens": prompt.shape[0],
        "peft_type": "PROMPT_TUNING",
        "peft_version": peft.__version__,
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "revision": model.base_config.revision,
        "task_type": "SEQ_CLS" if head_view is not None else PEFT_TASK[model.kind],
        "token_dim": prompt.shape[1],
        "tokenizer_kwargs": None,
        "tokenizer_name_or_path": None,
    }
    (out / "adapter_config.json").write_text(json.dumps(peft_cfg, indent=2, sort_keys=True))


def _write_serving(model, out: Path) -> None:
    out.mkdir()
    dtype = model.base.get_input_embeddings().weight.dtype
    files, view = model.prompt.serving_view(dtype)
    for name, tensors in files.items():
        save_tensors(tensors, out / name)
    meta = {
        "base_model": loadable_base(model.base_name),  # what an engine loads: a path or hub id, never "demo"
        "hidden_size": model.prompt.dim,
        "dtype": str(dtype).removeprefix("torch."),
        "layout": "prepend_before_bos",  # the prompt precedes every token, BOS included
        "embedding_space": "input_embeddings",  # same space as base.get_input_embeddings()(ids); no scaling applied
        "prompt": model.prompt.describe(),
        **view,
    }
    (out / "serving_meta.json").write_text(json.dumps(meta, indent=2))


# ---------------------------------------------------------------------------------------------------
# Reading


@dataclass
class SavedAdapter:
    source: torch.nn.Module  # the prompt source, rebuilt
    head: torch.nn.Module | None
    kind: str | None  # None: not recorded (a plain PEFT adapter of another task type)
    base_config: ModelConfig  # what loads the base it was trained on
    meta: dict  # the sidecar (or what a PEFT config says)
    selector: torch.nn.Module | None = None  # a bank's selector, rebuilt


def read(adapter_dir: str | Path) -> SavedAdapter:
    """An adapter dir's components, every file checked; no model is loaded."""
    from softprompt.methods import dept

    path = Path(adapter_dir)
    if dept.is_official(path):  # saved by the official DePT code (PEFT fork, PROMPT_TUNING_LORA)
        spec = dept.read_official(path)
        kind = dept.OFFICIAL_KINDS.get(spec["task_type"])
        meta = {"token_dim": spec["prompt"].shape[1], "base_model": spec["base_model"]}
        return SavedAdapter(dept.official_source(spec, kind or "seq2seq"), None, kind,
                            ModelConfig(name_or_path=spec["base_model"] or "", kind=kind or "auto"), meta)
    meta = read_sidecar(path)
    state = {}
    if meta.get("peft_tensor"):
        state[meta["peft_tensor"]] = read_prompt(path, meta)  # checked before any model loads
    extra = read_tensors(path / EXTRA, "re-export the adapter") if meta["has_extra"] else {}
    if meta.get("peft_modules"):  # a plain PEFT SEQ_CLS adapter: its head, from PEFT's modules_to_save keys
        extra = _peft_head(path, meta)
    if meta.get("extra_prefix"):  # format 1 stored the offset's own state dict
        extra = {meta["extra_prefix"] + k: v for k, v in extra.items()}
    state.update({k.removeprefix("prompt."): v for k, v in extra.items() if k.startswith("prompt.")})
    source = _restore("PROMPTS", meta["prompt"], state, path)
    head = None
    if meta.get("head"):
        head_state = {k.removeprefix("head."): v for k, v in extra.items() if k.startswith("head.")}
        head = _restore("HEADS", meta["head"], head_state, path)
    selector = None
    if meta.get("selector"):
        selector_state = {k.removeprefix("selector."): v for k, v in extra.items() if k.startswith("selector.")}
        selector = _restore("SELECTORS", meta["selector"], selector_state, path)
    kind = meta.get("kind")
    loading = meta.get("base_loading") or {}
    known = {f.name for f in dataclasses.fields(ModelConfig)} - {"name_or_path", "kind"}
    base_config = ModelConfig(name_or_path=meta.get("base_model") or "", kind=kind or "auto",
                              **{k: v for k, v in loading.items() if k in known})
    return SavedAdapter(source, head, kind, base_config, meta, selector)


def _peft_head(path: Path, meta: dict) -> dict[str, torch.Tensor]:
    """A PEFT SEQ_CLS adapter's head as our sidecar would hold it (`head.*` tensors, `meta["head"]` set). Only a
    head in the layout of transformers' decoder `score` (score_head.py) can be rebuilt; any other module PEFT
    saved (an encoder's `classifier` on its pooler, a custom module) is refused rather than dropped."""
    from softprompt import score_head

    file = path / "adapter_model.safetensors"
    tensors = {k: v for k, v in read_tensors(file, FIX).items() if k != "prompt_embeddings"}
    wanted = f"base_model.{score_head.PEFT_MODULE}.weight"
    if set(tensors) != {wanted} or tensors[wanted].dim() != 2 or tensors[wanted].shape[1] != meta["token_dim"]:
        raise SoftPromptError(f"adapter: {str(path)!r} is a PEFT {meta.get('peft_task')} adapter whose modules_to_save "
                              f"{meta['peft_modules']} hold {sorted(tensors)}; softprompt rebuilds a decoder's own "
                              f"`{score_head.PEFT_MODULE}` head ({wanted}, (labels, {meta['token_dim']})) and nothing "
                              "else, so it would give other scores; train the head with softprompt (head.type: linear)")
    weight = tensors[wanted]
    meta["head"] = score_head.ScoreHead(weight.shape[1], weight.shape[0]).describe()
    return {f"head.{score_head.PEFT_MODULE}.weight": weight}


def _restore(table: str, description: dict, state: dict, path: Path):
    from softprompt import registry

    entries = getattr(registry, table)
    kind = description.get("type") if isinstance(description, dict) else None
    if kind not in entries:
        raise SoftPromptError(f"adapter: {str(path / SIDECAR)!r} names a {table.lower()[:-1]} of type {kind!r}, which this "
                              f"softprompt does not have (it has {sorted(entries)}); upgrade softprompt or re-export")
    try:
        return entries[kind].restore(description, state)
    except (KeyError, RuntimeError, TypeError) as e:
        raise SoftPromptError(f"adapter: {str(path)!r}: its {kind} tensors do not match {SIDECAR} ({gist(e)}); "
                              "the files are damaged or belong to another adapter; re-export it") from None


def read_json(file: Path, fix: str) -> dict:
    """A JSON object from `file`; anything else (missing, not UTF-8, invalid, not an object) is one clear error."""
    if not file.is_file():
        raise SoftPromptError(f"{str(file)!r} does not exist; {fix}")
    try:
        data = json.loads(file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SoftPromptError(f"{str(file)!r} is not valid JSON ({getattr(e, 'msg', None) or e.reason}); {fix}") from None
    if not isinstance(data, dict):
        raise SoftPromptError(f"{str(file)!r} holds a JSON {type(data).__name__}, not an object; {fix}")
    return data


def read_tensors(file: Path, fix: str) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file. Never unpickles: a torch.save/pickle file is refused by name."""
    if not file.is_file():
        raise SoftPromptError(f"{str(file)!r} does not exist; {fix}")
    with open(file, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80" or head == b"PK":
        raise SoftPromptError(f"{str(file)!r} is a pickle / torch.save file, not safetensors (pickles are never "
                              f"loaded: they can run code); convert it with safetensors.torch.save_file, or {fix}")
    try:
        return load_file(str(file))
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError: truncated, empty, not safetensors
        reason = gist(e)
        raise SoftPromptError(f"{str(file)!r} is not a readable safetensors file ({reason}); it may be truncated; "
                              f"{fix}") from None


def _int_field(meta: dict, key: str, file: Path, fix: str) -> int:
    value = meta.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise SoftPromptError(f"{str(file)!r}: {key} is {value!r}, expected a positive integer; {fix}")
    return value


def read_sidecar(adapter_dir: Path) -> dict:
    """The sidecar in the current format (a format-1 sidecar or a plain PEFT config is translated), with
    `rows` (the PEFT tensor's row count) and `has_extra` added."""
    sidecar = adapter_dir / SIDECAR
    if sidecar.is_file():
        meta = read_json(sidecar, FIX)
        for key in ("num_virtual_tokens", "token_dim"):
            _int_field(meta, key, sidecar, FIX)
        if meta.get("format", 1) == 1:  # prompt in adapter_model.safetensors, an optional offset's A/B in EXTRA
            offset = meta.get("offset")
            meta["prompt"] = {"type": offset["type"] if offset else "plain", "offset": offset}
            meta["peft_tensor"], meta["head"], meta["extra_prefix"] = "prompt", None, "prompt.offset."
        meta["rows"] = meta["num_virtual_tokens"]
        meta["has_extra"] = (adapter_dir / EXTRA).is_file() or bool(meta.get("head")) or \
            meta["prompt"].get("type") not in ("plain", None) or not meta.get("peft_tensor")
        if meta.get("peft_tensor") and not (adapter_dir / "adapter_model.safetensors").is_file():
            raise SoftPromptError(f"adapter: {str(adapter_dir)!r} has no adapter_model.safetensors; {FIX}")
        return meta
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise SoftPromptError(
            f"adapter: {str(adapter_dir)!r} is not an adapter dir (no adapter_model.safetensors); "
            "point at a run's final/ or a PEFT prompt-tuning dir"
        )
    file = adapter_dir / "adapter_config.json"
    peft_cfg = read_json(file, FIX)  # a plain PEFT adapter
    # P-tuning's file holds its prompt encoder's output, materialised when PEFT saves (get_prompt_embedding_to_save),
    # which is what PEFT itself prepends once it loads the file: the same (p, d) prompt as prompt tuning's
    if peft_cfg.get("peft_type") not in PEFT_IMPORTS:
        raise SoftPromptError(f"adapter: {str(adapter_dir)!r} is a {peft_cfg.get('peft_type')} adapter; the PEFT types that "
                              f"import are {list(PEFT_IMPORTS)}")
    p, dim = (_int_field(peft_cfg, key, file, FIX) for key in ("num_virtual_tokens", "token_dim"))
    task = peft_cfg.get("task_type")
    # PEFT's own default: None means 2 for SEQ_2_SEQ_LM (an encoder prompt, then a decoder prompt), else 1
    submodules = peft_cfg.get("num_transformer_submodules") or (2 if task == "SEQ_2_SEQ_LM" else 1)
    if submodules not in (1, 2):
        raise SoftPromptError(f"{str(file)!r}: num_transformer_submodules is {submodules!r}, expected 1 or 2; {FIX}")
    kind = {"CAUSAL_LM": "causal", "SEQ_2_SEQ_LM": "seq2seq", "SEQ_CLS": "causal"}.get(task)  # SEQ_CLS: our score head's
    if submodules == 2 and kind != "seq2seq":
        raise SoftPromptError(f"{str(file)!r}: num_transformer_submodules is 2 with task_type {task!r}; PEFT splits the "
                              f"prompt in two for SEQ_2_SEQ_LM only (PEFT cannot run this one either); {FIX}")
    return {"base_model": peft_cfg.get("base_model_name_or_path"), "kind": kind, "prompt": {"type": "plain"},
            "peft_tensor": "prompt", "head": None, "has_extra": False, "token_dim": dim, "num_virtual_tokens": p,
            "rows": p * submodules, "num_transformer_submodules": submodules, "peft_task": task,
            "peft_modules": [m for m in peft_cfg.get("modules_to_save") or [] if m] or None,  # SEQ_CLS: its head
            "base_loading": {"revision": peft_cfg.get("revision")}}


def read_prompt(adapter_dir: Path, meta: dict) -> torch.Tensor:
    """The (p, d) prompt, its shape checked against the config before any model loads. A PEFT seq2seq
    adapter saved with num_transformer_submodules 2 (PEFT's default for SEQ_2_SEQ_LM) holds (2p, d), and
    PEFT's prompt tuning and P-tuning feed the encoder its first p rows only (`PeftModelForSeq2SeqLM.forward`
    and `generate`, since PEFT 0.4, huggingface/peft#519): the other p never run and never train. So the
    prompt is those first p rows, which gives PEFT's own outputs."""
    file = adapter_dir / "adapter_model.safetensors"
    fix = "re-export the adapter"
    tensors = read_tensors(file, fix)
    if "prompt_embeddings" not in tensors:
        raise SoftPromptError(f"{str(file)!r} has no 'prompt_embeddings' tensor (it holds {sorted(tensors)[:5]}); {fix}")
    prompt = tensors["prompt_embeddings"]
    expected = (meta["rows"], meta["token_dim"])
    if tuple(prompt.shape) != expected:
        raise SoftPromptError(
            f"{str(file)!r}: prompt_embeddings has shape {tuple(prompt.shape)} but the adapter's config says "
            f"{expected} (num_virtual_tokens={meta['num_virtual_tokens']}, token_dim={meta['token_dim']}"
            f"{', num_transformer_submodules=2' if meta.get('num_transformer_submodules') == 2 else ''}); "
            "the file is damaged or belongs to another adapter"
        )
    if meta.get("num_transformer_submodules") == 2:
        log.info("%s: a PEFT seq2seq adapter with num_transformer_submodules 2; its second %d rows are unused by PEFT "
                 "(encoder-only prompt) and are left out", adapter_dir, meta["num_virtual_tokens"])
        return prompt[:meta["num_virtual_tokens"]]  # (p, d): the encoder's rows, all PEFT runs
    return prompt


def check_base(saved: SavedAdapter, base, where: str) -> None:
    """Refuse a base other than the one the adapter was trained on: another architecture, another hub model,
    another hidden size or vocabulary, other embedding weights (the probe)."""
    from softprompt.loading_checks import hub_name

    meta = saved.meta
    recorded_type, model_type = meta.get("base_model_type"), getattr(base.config, "model_type", None)
    if recorded_type and model_type and recorded_type != model_type:
        raise SoftPromptError(f"adapter: {where} was trained on a {recorded_type} base ({meta.get('base_model')!r}) and "
                              f"this base is a {model_type}; load it with its own base")
    # names compare only where both sides name a hub model: a local dir may hold a copy of anything
    recorded_id, given_id = hub_name(meta.get("base_model")), hub_name(getattr(base.config, "_name_or_path", None))
    if recorded_id and given_id and recorded_id.lower() != given_id.lower():
        raise SoftPromptError(f"adapter: {where} was trained on hub model {recorded_id!r} and this base is {given_id!r} "
                              f"(a fine-tune of the same architecture can keep its embedding rows, so names are "
                              f"compared too); load it with {recorded_id!r}, or save this base to a local dir if it "
                              "really holds the same weights")
    dim = base.get_input_embeddings().weight.shape[1]
    if meta["token_dim"] != dim:
        raise SoftPromptError(f"adapter: {where}: the adapter's token_dim is {meta['token_dim']} but the base's hidden "
                              f"size is {dim}; load it with its own base ({meta.get('base_model')!r})")
    vocab = meta.get("base_vocab_size")
    if vocab is not None and vocab != base.get_input_embeddings().weight.shape[0]:
        raise SoftPromptError(f"adapter: {where} was trained on a base with {vocab} embedding rows and this base has "
                              f"{base.get_input_embeddings().weight.shape[0]} (another vocabulary, or resized "
                              f"embeddings); load it with its own base ({meta.get('base_model')!r})")
    probe = meta.get("base_probe")
    if probe is not None and not torch.allclose(torch.tensor(probe), torch.tensor(embedding_probe(base)), rtol=2e-2, atol=1e-3):
        raise SoftPromptError(
            f"adapter: {where} was trained on base model {meta.get('base_model')!r}, whose embedding weights differ "
            "from the base given; load it with its own base"
        )
