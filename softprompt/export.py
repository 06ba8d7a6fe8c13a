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
from softprompt.errors import SoftPromptError

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


def read_sidecar(adapter_dir: Path) -> dict:
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise SoftPromptError(
            f"adapter: {str(adapter_dir)!r} is not an adapter dir (no adapter_model.safetensors); "
            "point at a run's final/ or a PEFT prompt-tuning dir"
        )
    if (adapter_dir / SIDECAR).is_file():
        return json.loads((adapter_dir / SIDECAR).read_text())
    peft_cfg = json.loads((adapter_dir / "adapter_config.json").read_text())  # a plain PEFT adapter
    if peft_cfg.get("peft_type") != "PROMPT_TUNING":
        raise SoftPromptError(f"adapter: {str(adapter_dir)!r} is a {peft_cfg.get('peft_type')} adapter; only PROMPT_TUNING imports")
    return {"base_model": peft_cfg.get("base_model_name_or_path"), "kind": None, "offset": None,
            "token_dim": peft_cfg["token_dim"], "num_virtual_tokens": peft_cfg["num_virtual_tokens"]}


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
    kind = meta.get("kind")
    if base is None:
        if not meta.get("base_model"):
            raise SoftPromptError(f"adapter: {str(path)!r} names no base model; pass base=... explicitly")
        base, loaded_tok, kind = load_base(meta["base_model"], kind=kind or "auto")
        tokenizer = tokenizer or loaded_tok
    check_base(meta, base, repr(str(path)))
    prompt = load_file(str(path / "adapter_model.safetensors"))["prompt_embeddings"]
    offset = None
    if meta.get("offset"):
        spec = dict(meta["offset"])
        offset = OFFSETS[spec.pop("type")](**spec)
        offset.load_state_dict(load_file(str(path / EXTRA)))
    layer = PromptEmbedding(prompt, offset=offset)
    model = SoftPromptModel(base, layer, tokenizer, kind or detect_kind(base.config), meta.get("base_model"))
    return model.to(base.device)
