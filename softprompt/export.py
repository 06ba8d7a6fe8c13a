"""Adapter export and import.

An adapter dir is at once:
- a strict PEFT `PROMPT_TUNING` adapter (`adapter_config.json` with only PEFT's keys,
  `adapter_model.safetensors` holding `prompt_embeddings` (p, d) fp32, `num_transformer_submodules: 1`)
  that `peft.PeftModel.from_pretrained` loads;
- our sidecar `softprompt.json` (base model, kind, a probe of the base's embedding table so a wrong base
  is caught, the offset module if any) and `softprompt_extra.safetensors` for what PEFT cannot express
  (e.g. DePT's A and B);
- a serving bundle `serving/` for engines that take prompt embeddings (vLLM `prompt_embeds`): the
  prompt in the base's dtype and the metadata a client needs to build the same input.
Writes are atomic (temp dir + rename); loading never unpickles.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from softprompt.checkpoint import atomic_dir, commit
from softprompt.errors import SoftPromptError, gist

log = logging.getLogger(__name__)

SIDECAR = "softprompt.json"
EXTRA = "softprompt_extra.safetensors"
PEFT_TASK = {"causal": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM", "encoder": "FEATURE_EXTRACTION"}


def embedding_probe(base) -> list[float]:
    """Norms of the first 8 rows of the input embedding table: tells bases apart, survives dtype casts."""
    table = base.get_input_embeddings().weight
    return [round(float(x), 4) for x in table[:8].detach().float().norm(dim=1)]


def save_adapter(model, out_dir: str | Path, **meta) -> Path:
    import peft

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_dir(out)
    prompt = model.prompt.prompt.detach().float().cpu().contiguous()  # (p, d)
    save_file({"prompt_embeddings": prompt}, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    text_cfg = model.base.config.get_text_config()
    peft_cfg = {
        "auto_mapping": None,
        "base_model_name_or_path": model.base_name,
        "inference_mode": True,
        "modules_to_save": None,
        "num_attention_heads": getattr(text_cfg, "num_attention_heads", None),
        "num_layers": getattr(text_cfg, "num_hidden_layers", None),
        "num_transformer_submodules": 1,
        "num_virtual_tokens": prompt.shape[0],
        "peft_type": "PROMPT_TUNING",
        "peft_version": peft.__version__,
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "revision": None,
        "task_type": PEFT_TASK[model.kind],
        "token_dim": prompt.shape[1],
        "tokenizer_kwargs": None,
        "tokenizer_name_or_path": None,
    }
    (tmp / "adapter_config.json").write_text(json.dumps(peft_cfg, indent=2, sort_keys=True))
    offset = model.prompt.offset
    if offset is not None:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in offset.state_dict().items()}, str(tmp / EXTRA))
        log.warning("%s: PEFT has no type for a token offset (%s); peft.PeftModel.from_pretrained would load the "
                    "prompt alone and give other outputs. Load it with SoftPromptModel.from_adapter, or serve it "
                    "with serving/token_offset.safetensors", out, offset.describe()["type"])
    sidecar = {
        "format": 1,
        "base_model": model.base_name,
        "kind": model.kind,
        "num_virtual_tokens": prompt.shape[0],
        "token_dim": prompt.shape[1],
        "base_probe": embedding_probe(model.base),
        "offset": offset.describe() if offset is not None else None,
        **meta,
    }
    (tmp / SIDECAR).write_text(json.dumps(sidecar, indent=2, default=str))
    _write_serving(model, prompt, tmp / "serving")
    return commit(tmp, out)


def _write_serving(model, prompt: torch.Tensor, out: Path) -> None:
    out.mkdir()
    dtype = model.base.get_input_embeddings().weight.dtype
    save_file({"prompt_embeds": prompt.to(dtype).contiguous()}, str(out / "soft_prompt.safetensors"))
    meta = {
        "base_model": model.base_name,
        "hidden_size": prompt.shape[1],
        "num_virtual_tokens": prompt.shape[0],
        "dtype": str(dtype).removeprefix("torch."),
        "layout": "prepend_before_bos",  # the prompt precedes every token, BOS included
        "embedding_space": "input_embeddings",  # same space as base.get_input_embeddings()(ids); no scaling applied
        "token_offset": model.prompt.offset is not None,  # True: tokens also need the offset (token_offset.*)
        "recipe": "ids = tokenizer(text); x = cat([prompt_embeds, embed(ids)]); send x as prompt_embeds",
    }
    offset = model.prompt.offset
    if offset is not None:  # e.g. DePT: row index[i] of these rows is added to token i's embedding
        with torch.no_grad():
            rows = offset.rows().detach().to(dtype).cpu().contiguous()  # (s, d)
        save_file({"rows": rows}, str(out / "token_offset.safetensors"))
        meta["token_offset_spec"] = offset.describe()
        meta["recipe"] = ("ids = tokenizer(text); e = embed(ids); e[j] += rows[j] for the j-th token, j < s "
                          "(DePT with fixed_length and padding_side left: rows[s - n + j], n tokens); "
                          "x = cat([prompt_embeds, e]); send x as prompt_embeds")
    (out / "serving_meta.json").write_text(json.dumps(meta, indent=2))


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
    fix = "re-export the adapter, or point at a run's final/ or a PEFT prompt-tuning dir"
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise SoftPromptError(
            f"adapter: {str(adapter_dir)!r} is not an adapter dir (no adapter_model.safetensors); "
            "point at a run's final/ or a PEFT prompt-tuning dir"
        )
    if (adapter_dir / SIDECAR).is_file():
        meta = read_json(adapter_dir / SIDECAR, fix)
        for key in ("num_virtual_tokens", "token_dim"):
            _int_field(meta, key, adapter_dir / SIDECAR, fix)
        meta["rows"] = meta["num_virtual_tokens"]
        return meta
    file = adapter_dir / "adapter_config.json"
    peft_cfg = read_json(file, fix)  # a plain PEFT adapter
    if peft_cfg.get("peft_type") != "PROMPT_TUNING":
        raise SoftPromptError(f"adapter: {str(adapter_dir)!r} is a {peft_cfg.get('peft_type')} adapter; only PROMPT_TUNING imports")
    p, dim = (_int_field(peft_cfg, key, file, fix) for key in ("num_virtual_tokens", "token_dim"))
    task = peft_cfg.get("task_type")
    # PEFT's own default: None means 2 for SEQ_2_SEQ_LM (an encoder prompt, then a decoder prompt), else 1
    submodules = peft_cfg.get("num_transformer_submodules") or (2 if task == "SEQ_2_SEQ_LM" else 1)
    if submodules not in (1, 2):
        raise SoftPromptError(f"{str(file)!r}: num_transformer_submodules is {submodules!r}, expected 1 or 2; {fix}")
    kind = {"CAUSAL_LM": "causal", "SEQ_2_SEQ_LM": "seq2seq"}.get(task)
    return {"base_model": peft_cfg.get("base_model_name_or_path"), "kind": kind, "offset": None,
            "token_dim": dim, "num_virtual_tokens": p, "rows": p * submodules,
            "num_transformer_submodules": submodules}


def read_prompt(adapter_dir: Path, meta: dict) -> torch.Tensor:
    """The (p, d) prompt, its shape checked against the config before any model loads. A PEFT seq2seq
    adapter saved with num_transformer_submodules 2 holds (2p, d): p encoder rows then p decoder rows.
    PEFT prepends the decoder rows to the decoder's input; our seq2seq prompt is encoder-only, so such an
    adapter cannot be reproduced and is refused rather than loaded as a 2p-row encoder prompt."""
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
        raise SoftPromptError(
            f"adapter: {str(adapter_dir)!r} is a PEFT seq2seq adapter saved with num_transformer_submodules: 2 "
            f"(an encoder prompt and a decoder prompt, {meta['num_virtual_tokens']} rows each); softprompt's seq2seq "
            "prompt is encoder-only, so it cannot reproduce it. Train it with PromptTuningConfig("
            "num_transformer_submodules=1) or with softprompt"
        )
    return prompt


def check_new_output(out: str | Path) -> Path:
    """An export target that is safe to create: not '.', not an existing file, not a dir with files in it
    (export would replace it). Checked before anything is loaded or written."""
    path = Path(out)
    fix = "give a new directory path (export creates it)"
    if path.resolve() == Path.cwd().resolve():
        raise SoftPromptError(f"export: {str(out)!r} is the current directory, which export would replace; {fix}")
    if path.is_file() or (path.exists() and not path.is_dir()):
        raise SoftPromptError(f"export: {str(out)!r} is an existing file; {fix}")
    if path.is_dir() and any(path.iterdir()):
        raise SoftPromptError(f"export: {str(out)!r} is not empty, and export would replace what it holds; {fix}, "
                              "or delete it first")
    return path


def check_base(meta: dict, base, where: str) -> None:
    dim = base.get_input_embeddings().weight.shape[1]
    probe = meta.get("base_probe")
    mismatch = meta["token_dim"] != dim or (
        probe is not None and not torch.allclose(torch.tensor(probe), torch.tensor(embedding_probe(base)), rtol=2e-2, atol=1e-3)
    )
    if mismatch:
        raise SoftPromptError(
            f"adapter: {where} was trained on base model {meta.get('base_model')!r} (hidden size {meta['token_dim']}), "
            f"which is not the base given (hidden size {dim}, other embedding weights); load it with its own base"
        )


def load_adapter(adapter_dir: str | Path, base=None, tokenizer=None):
    from softprompt.layers import OFFSETS, PromptEmbedding
    from softprompt.methods import dept
    from softprompt.model import SoftPromptModel, detect_kind, load_base

    path = Path(adapter_dir)
    if dept.is_official(path):  # saved by the official DePT code (PEFT fork, PROMPT_TUNING_LORA)
        return dept.load_official(path, base=base, tokenizer=tokenizer)
    meta = read_sidecar(path)
    prompt = read_prompt(path, meta)  # checked before any model loads
    extra = read_tensors(path / EXTRA, "re-export the adapter") if meta.get("offset") else None
    kind = meta.get("kind")
    if base is None:
        if not meta.get("base_model"):
            raise SoftPromptError(f"adapter: {str(path)!r} names no base model; pass base=... explicitly")
        base, loaded_tok, kind = load_base(meta["base_model"], kind=kind or "auto")
        tokenizer = tokenizer or loaded_tok
    check_base(meta, base, repr(str(path)))
    offset = None
    if meta.get("offset"):
        spec = dict(meta["offset"])
        offset = OFFSETS[spec.pop("type")](**spec)
        offset.load_state_dict(extra)
    layer = PromptEmbedding(prompt, offset=offset)
    model = SoftPromptModel(base, layer, tokenizer, kind or detect_kind(base.config), meta.get("base_model"))
    return model.to(base.device)
