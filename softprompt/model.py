"""SoftPromptModel: a frozen Hugging Face model composed with the shared prompt-embedding layer.

It never subclasses or patches the HF model. A small table (`KINDS`) says, per architecture kind,
where the prompt goes and how outputs are brought back in line with the input:

- causal: the prompt precedes the tokens; rows with left padding are right-aligned first (pads
  between the prompt and the tokens would take up sliding-window, local-attention and ALiBi key
  slots), `position_ids` come from the mask, so left-, right- and un-padded rows agree on every
  architecture; only the real positions reach the LM head (`logits_to_keep`).
- seq2seq: the prompt goes on the encoder only (Lester et al. §4); the decoder is untouched.
- encoder: rows are right-aligned and the prompt precedes the tokens; the model numbers `[prompt; tokens]`
  itself (RoBERTa counts from padding_idx + 1, BERT from 0), as it would number real tokens there; the
  body's outputs for virtual positions are dropped before a head runs.

Outputs are always aligned with `input_ids`: no logits or hidden states for virtual positions.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from softprompt import compat, shared_prefix
from softprompt.errors import SoftPromptError, gist
from softprompt.layers import PromptEmbedding, apply_offset

log = logging.getLogger(__name__)

DEMO_MODEL = Path(__file__).parent / "data" / "demo" / "model"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class SoftPromptOutput:
    logits: torch.Tensor | None = None  # (B, L, V) aligned with the input (decoder input for seq2seq)
    hidden_states: torch.Tensor | None = None  # (B, L, D) last hidden state (causal: with output_hidden_states)
    loss: torch.Tensor | None = None  # mean token cross-entropy over label tokens
    loss_sum: torch.Tensor | None = None  # summed cross-entropy, for normalising across accumulation
    num_tokens: torch.Tensor | None = None  # label tokens scored


# ---------------------------------------------------------------------------------------------------
# Loading the frozen base


def resolve_model_path(name_or_path: str) -> str:
    return str(DEMO_MODEL) if name_or_path == "demo" else name_or_path


def detect_kind(config) -> str:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not _is_encoder_only(config):
        return "causal"
    return "encoder"


def _is_encoder_only(config) -> bool:
    return config.model_type in {"bert", "roberta", "xlm-roberta", "deberta", "deberta-v2", "electra", "distilbert", "camembert", "modernbert"}


def load_base(name_or_path: str, kind: str = "auto", dtype: str = "float32", revision: str | None = None,
              trust_remote_code: bool = False):
    """Load (model, tokenizer, kind) from a hub id or local dir; "demo" is the embedded default."""
    from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM,
                              AutoTokenizer)

    from softprompt.loading_checks import check_model_dir

    check_model_dir(name_or_path, kind)  # a local dir missing weights/tokenizer, or of another kind: one clear error
    path = resolve_model_path(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise SoftPromptError(
            f"model.name_or_path: cannot load {name_or_path!r} ({gist(e)}); "
            "give a local model directory or a hub id reachable from this machine"
        ) from None
    kind = detect_kind(config) if kind == "auto" else kind
    auto = {"causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM, "encoder": AutoModel}[kind]
    model = auto.from_pretrained(path, revision=revision, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, kind


# ---------------------------------------------------------------------------------------------------
# Row layout helpers


def _drop_virtual_rows(p: int):
    """Forward hook for an encoder body: its sequence output (B, p+L, D) -> (B, L, D), pooled output kept."""

    def hook(module, args, out):
        if isinstance(out, tuple):
            return (out[0][:, p:],) + tuple(out[1:])
        out.last_hidden_state = out.last_hidden_state[:, p:]  # ModelOutput keeps item and attribute in sync
        return out

    return hook


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the real (mask = 1) columns of each row; padding gets 0 (it is masked anyway)."""
    return (mask.long().cumsum(1) - 1).clamp(min=0)  # (B, T)


def has_gaps(mask: torch.Tensor) -> bool:
    """Whether some row has a pad before a real token (left padding, or holes). One host sync."""
    return bool((mask[:, 1:] > mask[:, :-1]).any())


def right_align(*tensors: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Move each row's real columns to the front, keeping their order. Returns (order, tensors).
    Used where a model has no position_ids (T5's relative buckets would see a left-pad gap)."""
    order = torch.argsort((mask == 0).to(torch.int8), dim=1, stable=True)  # (B, T)
    return order, tuple(_gather_rows(t, order) for t in tensors)


def left_align(*tensors: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Move each row's padding to the front (the layout `generate` appends to)."""
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # (B, T), pads first
    return tuple(_gather_rows(t, order) for t in tensors)


def _gather_rows(t: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    index = order.view(*order.shape, *([1] * (t.dim() - 2))).expand(*order.shape, *t.shape[2:])
    return t.gather(1, index)


def _undo_order(t: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    index = order.view(*order.shape, *([1] * (t.dim() - 2))).expand_as(t)
    return torch.empty_like(t).scatter(1, index, t)


def _accepts(module: nn.Module, name: str) -> bool:
    return name in inspect.signature(module.forward).parameters


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed CE over labels != -100, and their count. logits (B, T, V), labels (B, T)."""
    loss_sum = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum")
    return loss_sum, (labels != -100).sum()


# ---------------------------------------------------------------------------------------------------
# The wrapper


class SoftPromptModel(nn.Module):
    def __init__(self, base: nn.Module, prompt: PromptEmbedding, tokenizer=None, kind: str | None = None,
                 base_name: str | None = None, execution: str = "auto"):
        super().__init__()
        base.requires_grad_(False)
        self.base = base
        self.prompt = prompt
        self.tokenizer = tokenizer
        self.kind = kind or detect_kind(base.config)
        if self.kind not in KINDS:
            raise SoftPromptError(f"model.kind: {self.kind!r} is not one of {sorted(KINDS)}")
        self.base_name = base_name or getattr(base.config, "_name_or_path", None)
        self._use_positions = self.kind == "causal" and _accepts(base, "position_ids")
        self._keep_logits = self.kind == "causal" and _accepts(base, "logits_to_keep")
        self.execution = execution  # auto | shared_prefix | concat, resolved by execution_mode()
        self._prompt_kv = shared_prefix.PromptKV()  # the prompt's cache for no-grad calls (eval, generate)
        self.execution_mode()  # a forced mode that cannot run fails here, not at the first batch

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_path: str, num_virtual_tokens: int = 20, init: str = "vocab",
                        kind: str = "auto", dtype: str = "float32", seed: int = 0, **prompt_kwargs):
        """Frozen base from a hub id or local dir, plus a fresh prompt (see `PromptConfig`)."""
        from softprompt.config import PromptConfig

        base, tokenizer, kind = load_base(name_or_path, kind=kind, dtype=dtype)
        pcfg = PromptConfig(num_virtual_tokens=num_virtual_tokens, init=init, **prompt_kwargs)
        prompt = PromptEmbedding(initial_prompt(pcfg, base, tokenizer, seed), kernel=pcfg.kernel)
        return cls(base, prompt, tokenizer, kind, name_or_path, execution=pcfg.execution)

    @classmethod
    def from_adapter(cls, adapter_dir: str | Path, base: nn.Module | None = None, tokenizer=None):
        """Base model named in the adapter (or the one given) plus the trained prompt."""
        from softprompt.export import load_adapter

        return load_adapter(adapter_dir, base=base, tokenizer=tokenizer)

    def save_adapter(self, out_dir: str | Path, **meta) -> Path:
        """A PEFT-loadable adapter dir plus our sidecar and a serving bundle (see export.py)."""
        from softprompt.export import save_adapter

        return save_adapter(self, out_dir, **meta)

    export_peft = save_adapter

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @property
    def input_table(self) -> nn.Module:
        return self.base.get_input_embeddings()

    @property
    def device(self) -> torch.device:
        return self.prompt.prompt.device

    def execution_mode(self) -> str:
        """"shared_prefix" or "concat": the one place the causal execution path is chosen (it can change
        when gradient checkpointing is switched on, so it is asked per call; see shared_prefix.choose)."""
        return shared_prefix.choose(self.execution, self.base, self.kind)

    # -- forward -----------------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, right_padded: bool = False, **kwargs) -> SoftPromptOutput:
        """Any padding side. `right_padded=True` promises that no row has a pad before a real token (as
        `data.collate` builds batches): causal models then skip the check for left padding, whose host
        sync would stall a GPU once per step."""
        if attention_mask is None:
            attention_mask, right_padded = torch.ones_like(input_ids), True
        if self.kind == "causal":
            return self._causal(input_ids, attention_mask, labels, right_padded, **kwargs)
        return KINDS[self.kind](self, input_ids, attention_mask, labels, **kwargs)

    def _causal(self, input_ids, attention_mask, labels, right_padded: bool = False, **kwargs) -> SoftPromptOutput:
        # Pads between the prompt and the tokens would take up key slots that sliding windows, local
        # attention and ALiBi count by column, so a left-padded row would differ from the same row
        # unpadded. Right-aligned rows have no such gap, and a causal row never attends to its trailing
        # pads; outputs go back to the input's order at the end.
        order = None
        if not right_padded and has_gaps(attention_mask):
            tensors = (input_ids, attention_mask) + ((labels,) if labels is not None else ())
            order, tensors = right_align(*tensors, mask=attention_mask)
            input_ids, attention_mask = tensors[:2]
            labels = tensors[2] if labels is not None else None
            # any other per-token input (e.g. token_type_ids) moves with its tokens
            kwargs = {k: _gather_rows(v, order) if torch.is_tensor(v) and v.shape[:2] == order.shape else v
                      for k, v in kwargs.items()}
        length = input_ids.shape[1]
        if self.execution_mode() == "shared_prefix":  # the prompt runs once; only the L tokens run per row
            tokens = self.prompt.token_embeds(input_ids, attention_mask, self.input_table)  # (B, L, D)
            kv = self._prompt_kv.get(self.base, self.prompt.prompt, tokens.dtype)
            out = shared_prefix.forward(self.base, kv, tokens, attention_mask, **kwargs)
        else:
            embeds, mask = self.prompt(input_ids, attention_mask, self.input_table)  # (B, p+L, D), (B, p+L)
            extra = {"position_ids": positions_from_mask(mask)} if self._use_positions else {}
            if self._keep_logits:
                extra["logits_to_keep"] = length  # the LM head never sees the p virtual positions
            out = self.base(inputs_embeds=embeds, attention_mask=mask, use_cache=False, **extra, **kwargs)
        logits = out.logits[:, -length:]  # (B, L, V); a no-op unless logits_to_keep was ignored
        result = SoftPromptOutput(logits=logits)
        if getattr(out, "hidden_states", None) is not None:
            result.hidden_states = out.hidden_states[-1][:, -length:]  # (B, L, D), aligned (for pooling)
        if labels is not None:
            # The logit at position t predicts token t+1; the prompt's last position would predict the
            # first token, which is never a target (a target always follows its source).
            # Labels move left rather than logits being sliced: slicing (B, L, V) would copy it, forward and back.
            targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # (B, L): targets[:, t] = labels[:, t+1]
            result.loss_sum, result.num_tokens = token_cross_entropy(logits, targets)
            result.loss = result.loss_sum / result.num_tokens.clamp(min=1)
        if order is not None:  # back to the caller's column order
            result.logits = _undo_order(result.logits, order)
            if result.hidden_states is not None:
                result.hidden_states = _undo_order(result.hidden_states, order)
        return result

    def _seq2seq(self, input_ids, attention_mask, labels, decoder_input_ids=None, **kwargs) -> SoftPromptOutput:
        _, (input_ids, attention_mask) = right_align(input_ids, attention_mask, mask=attention_mask)
        embeds, mask = self.prompt(input_ids, attention_mask, self.input_table)  # encoder only: (B, p+L, D)
        if decoder_input_ids is None and labels is not None:
            decoder_input_ids = self.base.prepare_decoder_input_ids_from_labels(labels=labels)
        out = self.base(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=decoder_input_ids,
                        use_cache=False, **kwargs)
        result = SoftPromptOutput(logits=out.logits)  # (B, T_dec, V): aligned with the decoder input
        if labels is not None:
            result.loss_sum, result.num_tokens = token_cross_entropy(out.logits, labels)
            result.loss = result.loss_sum / result.num_tokens.clamp(min=1)
        return result

    def _encoder(self, input_ids, attention_mask, labels, **kwargs) -> SoftPromptOutput:
        p = self.prompt.num_virtual_tokens
        order, (input_ids, attention_mask) = right_align(input_ids, attention_mask, mask=attention_mask)
        embeds, mask = self.prompt(input_ids, attention_mask, self.input_table)  # (B, p+L, D)
        # No position_ids: rows are right-aligned, so the model's own numbering of [prompt; tokens] is the
        # one it gives real tokens there (RoBERTa/XLM-R start at padding_idx + 1, BERT at 0); ids from
        # the mask would start every model at 0.
        body = self.base.base_model
        # A head model (e.g. BertForMaskedLM): the body's output loses its p virtual rows before the head
        # runs, so the head computes (B, L, ...) only. A bare body (AutoModel) is sliced after.
        trim = body.register_forward_hook(_drop_virtual_rows(p)) if body is not self.base else None
        try:
            out = self.base(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        finally:
            if trim is not None:
                trim.remove()
        keep = slice(None) if trim is not None else slice(p, None)
        result = SoftPromptOutput()
        if getattr(out, "logits", None) is not None:
            result.logits = _undo_order(out.logits[:, keep], order)  # (B, L, V) in the input's order
        if getattr(out, "last_hidden_state", None) is not None:
            result.hidden_states = _undo_order(out.last_hidden_state[:, p:], order)  # (B, L, D)
        if labels is not None and result.logits is not None:
            result.loss_sum, result.num_tokens = token_cross_entropy(result.logits, labels)
            result.loss = result.loss_sum / result.num_tokens.clamp(min=1)
        return result

    # -- generation --------------------------------------------------------------------------------

    def prompted_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The embeddings and mask `generate` starts from: causal rows as [pads; prompt; tokens]
        (left-aligned, so new tokens append after the real ones), seq2seq encoder rows right-aligned."""
        if self.kind == "causal":
            embeds, mask = self.prompt(input_ids, attention_mask, self.input_table)  # (B, p+L, D)
            return left_align(embeds, mask, mask=mask)
        if self.kind == "seq2seq":
            _, (input_ids, attention_mask) = right_align(input_ids, attention_mask, mask=attention_mask)
            return self.prompt(input_ids, attention_mask, self.input_table)
        raise SoftPromptError("generate: encoder models do not generate; use a causal or seq2seq model")

    @torch.no_grad()
    def generate(self, inputs: str | list[str] | torch.Tensor, attention_mask: torch.Tensor | None = None,
                 **generate_kwargs):
        """Through the HF model's own `generate`. Strings in, strings out; ids in, new ids out."""
        texts = [inputs] if isinstance(inputs, str) else inputs
        if isinstance(texts, list):
            if self.tokenizer is None:
                raise SoftPromptError("generate: pass token ids, or build the model with a tokenizer")
            enc = self.tokenizer(texts, return_tensors="pt", padding=True)
            input_ids, attention_mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        else:
            input_ids = texts.to(self.device)
            attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(self.device)
        kwargs = self._generate_kwargs(generate_kwargs, input_ids.shape[1])
        if (self.kind == "causal" and self.execution_mode() == "shared_prefix" and not self._gap_blocks_cache(attention_mask)
                and not shared_prefix.candidate_decoding(kwargs, self.base.generation_config)):
            # [prompt; pads; tokens]: the prompt's cache is computed once and shared by every call and row
            input_ids, attention_mask = left_align(input_ids, attention_mask, mask=attention_mask)
            embeds, mask = self.prompt(input_ids, attention_mask, self.input_table)  # (B, p+L, D)
            kv = self._prompt_kv.get(self.base, self.prompt.prompt, embeds.dtype)
            prepared = shared_prefix.generation_inputs(kv, embeds, mask, kwargs, self.base.generation_config)
        else:
            embeds, mask = self.prompted_inputs(input_ids, attention_mask)
            prepared = {"inputs_embeds": embeds, "attention_mask": mask}
        with self._offset_new_tokens(attention_mask):
            out = self.base.generate(**prepared, **kwargs)
        if isinstance(inputs, torch.Tensor):
            return out
        decoded = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return decoded[0] if isinstance(inputs, str) else decoded

    def _generate_kwargs(self, generate_kwargs: dict, input_length: int) -> dict:
        """The caller's arguments plus our defaults (20 new tokens, greedy, the tokenizer's pad id) where the
        caller set nothing: neither as a keyword nor in a passed GenerationConfig. A passed config is copied,
        never changed. A causal caller's `max_length` counts their tokens and the new ones, while `generate`
        would count the prompt's embeddings too: it becomes `max_new_tokens` = max_length - input length."""
        config = generate_kwargs.get("generation_config")
        generate_kwargs = dict(generate_kwargs)

        def unset(*names: str) -> bool:
            return all(generate_kwargs.get(n) is None and getattr(config, n, None) is None for n in names)

        defaults = {}
        max_length = generate_kwargs.pop("max_length", None) if self.kind == "causal" else None
        if self.kind == "causal" and max_length is None and getattr(config, "max_length", None) is not None:
            max_length = config.max_length  # transformers 5 leaves unset fields None: the caller set this
        if unset("max_new_tokens") and max_length is not None:
            if max_length <= input_length:
                raise SoftPromptError(f"generate: max_length={max_length} leaves no room after the {input_length}-token "
                                      "input; raise it or pass max_new_tokens")
            defaults["max_new_tokens"] = max_length - input_length
        elif unset("max_new_tokens", "max_length"):
            defaults["max_new_tokens"] = 20
        if unset("do_sample"):
            defaults["do_sample"] = False
        if self.tokenizer is not None and unset("pad_token_id"):
            defaults["pad_token_id"] = self.tokenizer.pad_token_id
        if config is None:
            return {**defaults, **generate_kwargs}
        config = copy.deepcopy(config)
        for key, value in defaults.items():
            setattr(config, key, value)
        if max_length is not None:  # now expressed as max_new_tokens
            config.max_length = None
        return {**generate_kwargs, "generation_config": config}

    def _gap_blocks_cache(self, attention_mask: torch.Tensor) -> bool:
        """True when the shared prompt cache cannot serve this batch exactly: the cache layout puts a
        shorter row's pads between the prompt and its tokens, which models that count key columns
        (windows, local attention, ALiBi) would see. Concatenation then puts the pads first instead."""
        if bool(attention_mask.all()):
            return False
        reason = shared_prefix.column_sensitive(self.base.config)
        if reason is not None:
            shared_prefix.log_once(f"generate: a padded batch on a model with {reason} uses concatenation "
                                   "(the shared prompt cache would put pads inside the attention window)")
        return reason is not None

    @contextlib.contextmanager
    def _offset_new_tokens(self, attention_mask: torch.Tensor):
        """While `generate` runs, add the token offset (e.g. DePT's) to the tokens it generates, as training
        adds it to every real token a row holds: generated token j of a row with n source tokens takes the
        row the offset gives real token n + j. `generate` embeds new ids through the base's own table, so a
        forward hook on that table does it, for this call only.

        The row count comes from the attention mask `generate` passes to each forward (a pre-hook keeps it):
        the prompt's p columns are a row's first p real columns in both layouts, so the real columns after
        them are the tokens. Reading it each step (rather than counting calls) stays right when candidate
        decoding (assistants, prompt lookup) proposes tokens and then rejects some."""
        offset = self.prompt.offset
        if offset is None or self.kind != "causal" or not hasattr(offset, "generation_index"):
            yield
            return
        p = self.prompt.num_virtual_tokens
        state = {"mask": None}

        def keep_mask(module, args, kwargs):
            state["mask"] = generation_mask(kwargs)

        def add_offset(module, args, out):
            mask = state["mask"]
            if mask is None or mask.shape[0] != out.shape[0]:
                raise SoftPromptError("generate: a token offset (DePT) needs the 2-D attention mask generate passes "
                                      "to the model; this generation mode passes none")
            mask = mask.long()  # (B', T): [pads;] prompt, tokens, generated so far (the last k columns: these)
            tokens = mask * (mask.cumsum(1) > p)  # real columns after the row's first p (the prompt's)
            index = offset.generation_index(tokens)
            if index is None:
                return out
            return apply_offset(out, offset.rows(), index[:, -out.shape[1]:])  # (B', k, D)

        pre = self.base.register_forward_pre_hook(keep_mask, with_kwargs=True)
        post = self.input_table.register_forward_hook(add_offset)
        try:
            yield
        finally:
            pre.remove()
            post.remove()


def generation_mask(forward_kwargs: dict) -> torch.Tensor | None:
    """The (B, T) attention mask of a forward call inside `generate`, over the cache and the new inputs.
    `generate` drops a mask with no padding in it; every column is then real, and T is the cache's length
    plus the new inputs'. None when the call carries a mask that is not 2-D."""
    mask = forward_kwargs.get("attention_mask")
    if mask is not None:
        return mask if mask.dim() == 2 else None
    new = next((t for t in (forward_kwargs.get("input_ids"), forward_kwargs.get("inputs_embeds")) if t is not None), None)
    if new is None:
        return None
    cache = compat.passed_cache(forward_kwargs)
    past = cache.get_seq_length() if cache is not None else 0
    return torch.ones(new.shape[0], past + new.shape[1], dtype=torch.long, device=new.device)  # (B, T)


KINDS: dict[str, Callable] = {
    "causal": SoftPromptModel._causal,
    "seq2seq": SoftPromptModel._seq2seq,
    "encoder": SoftPromptModel._encoder,
}


# ---------------------------------------------------------------------------------------------------
# Prompt initialisation from a PromptConfig


def initial_prompt(pcfg, base: nn.Module, tokenizer, seed: int) -> torch.Tensor:
    """The (p, d) fp32 starting prompt chosen by `pcfg.init`."""
    from softprompt.layers import inits

    table = base.get_input_embeddings().weight
    p, d = pcfg.num_virtual_tokens, table.shape[1]
    generator = torch.Generator().manual_seed(pcfg.seed if pcfg.seed is not None else seed)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    if pcfg.init == "uniform":
        return inits.uniform(p, d, pcfg.init_range, generator)
    if pcfg.init == "vocab":
        return inits.sampled_vocab(table, p, special, pcfg.vocab_top_k, generator)
    if pcfg.init == "text":
        ids = tokenizer(pcfg.init_text)["input_ids"]  # special tokens included, as PEFT's TEXT and DePT's code
        return inits.text(table, ids, p)
    if pcfg.init == "class_label":
        ids = [tokenizer(label, add_special_tokens=False)["input_ids"] for label in pcfg.init_labels]
        return inits.class_label(table, ids, p, special, pcfg.vocab_top_k, generator)
    if pcfg.init == "file":
        return inits.from_file(pcfg.init_file, p, d)
    raise SoftPromptError(f"prompt.init: unknown init {pcfg.init!r}")
