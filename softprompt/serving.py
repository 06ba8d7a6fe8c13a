"""Serving: a text and an adapter in, the request a serving engine takes out, carrying exactly the embeddings our
model feeds its base (research/peft_anchor.md §6; issue "Interop and serving").

Engines take the whole input as embeddings, prompt included: `embeddings()` builds them the way
`SoftPromptModel` does (the prompt before every token, BOS included; DePT's offset on the token rows; a bank's
prompt as its selector chooses it from the text), as one (n, hidden) tensor, n = prompt rows + text tokens.

The embedding space is the base's input-embedding output (`base.get_input_embeddings()(ids)`, which is what
HF's `inputs_embeds` takes). Engines differ where a model scales its embeddings (Gemma by sqrt(hidden)), read
from their sources:
- vLLM 0.33 (`vllm/model_executor/models/gemma{,2,3}.py`): `embed_input_ids` applies the normalizer and
  `inputs_embeds` are used as given: the scaled rows, as HF 5 takes them.
- SGLang 0.5.23 (`sglang/srt/models/gemma.py`, `gemma2.py`): `input_embeds` are multiplied by sqrt(hidden)
  like token embeddings, so they must arrive unscaled; Gemma 3 (`gemma3_causal.py`) scales inside its
  embedding module and takes `input_embeds` as given.
`ENGINE_UNSCALE` holds the model types an engine scales again; `payload` divides by the factor there.

Payloads:
- vLLM Completions (`--enable-prompt-embeds`): `prompt_embeds` is a base64 string of a `torch.save`d 2-D
  tensor, read with `weights_only=True` and cast to the server's dtype (`vllm/renderers/embed_utils.py`);
  no chat template is applied. Decoder-only models only.
- vLLM Chat's `{"type": "prompt_embeds", "data": ...}` part splices embeddings inside the chat template.
  Our adapters are trained with the prompt before the raw text (layout `prepend_before_bos`), so a chat
  template around them is another input than the one trained: refused, naming the Completions payload.
- SGLang `/generate`: `input_embeds` as a JSON list of float lists, the whole sequence (the radix cache must
  be off on the server: it keys on token ids).
"""

from __future__ import annotations

import base64
import io
import json
import math

import torch

from softprompt.errors import SoftPromptError

ENGINES = ("vllm", "vllm-chat", "sglang")

# (engine, model_type) pairs whose engine multiplies given embeddings by sqrt(hidden_size) again
ENGINE_UNSCALE = {("sglang", "gemma"), ("sglang", "gemma2")}


@torch.no_grad()
def embeddings(model, text: str, prompt_index: int | None = None) -> torch.Tensor:
    """(n, hidden) fp32: the prompt's rows then the text's tokens as our model feeds them to its base (a bank:
    `prompt_index`, or its selector's choice from the text)."""
    if model.kind != "causal":
        raise SoftPromptError(f"serving: engines take prompt embeddings for decoder-only models, and this adapter's base "
                              f"is {model.kind} (vLLM refuses prompt_embeds for encoder-decoder models)")
    if model.tokenizer is None:
        raise SoftPromptError("serving: the model has no tokenizer; load it with SoftPromptModel.from_adapter")
    enc = model.tokenizer(text, return_tensors="pt")
    ids, mask = enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device)
    index = None if prompt_index is None else torch.tensor([prompt_index], device=model.device)
    if index is None and getattr(model, "selector", None) is not None:
        index = model.select(ids, mask)
    embeds, _ = model.prompted_inputs(ids, mask, index)  # (1, p+L, D): one row, no padding
    return embeds[0].float()


def engine_scale(model, engine: str) -> float:
    """What `engine` multiplies given embeddings by for this base (see ENGINE_UNSCALE): 1, or sqrt(hidden)."""
    text = model.base.config.get_text_config()
    return math.sqrt(text.hidden_size) if (engine.split("-")[0], getattr(text, "model_type", None)) in ENGINE_UNSCALE else 1.0


def engine_rows(model, rows: torch.Tensor, engine: str) -> torch.Tensor:
    """`rows` in the space `engine` takes for this base."""
    return rows / engine_scale(model, engine)


def encode_tensor(rows: torch.Tensor) -> str:
    """base64 of `torch.save(rows)`: what vLLM's `prompt_embeds` takes."""
    buffer = io.BytesIO()
    torch.save(rows.detach().cpu().contiguous(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_tensor(data: str) -> torch.Tensor:
    """The inverse of `encode_tensor`, as vLLM reads it (weights_only: no code runs)."""
    return torch.load(io.BytesIO(base64.b64decode(data, validate=True)), weights_only=True, map_location="cpu")


def payload(model, text: str, engine: str = "vllm", dtype: str | torch.dtype | None = None, model_name: str | None = None,
            prompt_index: int | None = None, **sampling) -> dict:
    """The request body for `engine` (vllm: Completions; sglang: /generate) carrying `text` with the prompt.
    `dtype`: the rows' dtype on the wire (default: the base's); `sampling`: the engine's sampling fields."""
    if engine not in ENGINES:
        raise SoftPromptError(f"serving: engine {engine!r} is not one of {list(ENGINES)}")
    if engine == "vllm-chat":
        raise SoftPromptError("serving: vLLM Chat splices prompt_embeds inside the chat template, and this adapter was "
                              "trained with its prompt before the raw text (layout prepend_before_bos), so the engine "
                              "would see another input; use engine vllm (the Completions API)")
    rows = engine_rows(model, embeddings(model, text, prompt_index), engine)  # (n, D)
    dtype = _dtype(dtype) if dtype is not None else model.base.get_input_embeddings().weight.dtype
    rows = rows.to(dtype)
    if engine == "vllm":
        body = {"prompt_embeds": encode_tensor(rows), **sampling}
        return {"model": model_name, **body} if model_name else body
    return {"input_embeds": rows.float().tolist(), "sampling_params": sampling}


def _dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    value = getattr(torch, str(name), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise SoftPromptError(f"serving: dtype {name!r} is not a floating-point torch dtype; e.g. bfloat16, float16, "
                              "float32")
    return value


def payload_rows(body: dict, model, engine: str) -> torch.Tensor:
    """The (n, D) rows a payload carries, back in our model's space (the parity check's other half)."""
    rows = decode_tensor(body["prompt_embeds"]) if engine == "vllm" else torch.tensor(body["input_embeds"])
    return rows * engine_scale(model, engine)


def to_json(body: dict) -> str:
    return json.dumps(body)
