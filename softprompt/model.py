"""SoftPromptModel: a frozen Hugging Face model composed with the shared prompt-embedding layer.

It never subclasses or patches the HF model. One method per architecture kind (`_causal`, `_seq2seq`,
`_encoder`) says where the prompt goes and how outputs are brought back in line with the input:

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
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from softprompt import adapter, compat, selectors, shared_prefix
from softprompt.errors import SoftPromptError
from softprompt.layers import apply_offset
from softprompt.loading import ModelConfig, detect_kind, load_base
from softprompt.objectives.lm import token_loss

log = logging.getLogger(__name__)

KIND_NAMES = ("causal", "seq2seq", "encoder")
OUTPUTS = ("logits", "hidden", "scores")


@dataclass
class SoftPromptOutput:
    logits: torch.Tensor | None = None  # (B, L, V) aligned with the input (decoder input for seq2seq)
    hidden_states: torch.Tensor | None = None  # (B, L, D) last hidden state, aligned with the input
    scores: torch.Tensor | None = None  # (B, num_outputs) from the model's head (`head_outputs`)
    loss: torch.Tensor | None = None  # mean token cross-entropy over label tokens (forward with labels=)
    loss_sum: torch.Tensor | None = None  # summed cross-entropy, for normalising across accumulation
    num_tokens: torch.Tensor | None = None  # label tokens scored


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


# ---------------------------------------------------------------------------------------------------
# The wrapper


class SoftPromptModel(nn.Module):
    """A frozen base, a prompt source (layers/), optionally a trainable head (heads.py) and, for a bank of
    prompts, a selector (selectors/) that picks each row's prompt where the caller passes no `prompt_index`.

    `forward` gives the base's logits aligned with the input; `hidden_states` runs the base's body only
    (no LM head) and `head_outputs` feeds those hidden states to the head. Each runs on the execution
    path `execution_mode()` chooses (shared prefix or concatenation)."""

    def __init__(self, base: nn.Module, prompt: nn.Module, tokenizer=None, kind: str | None = None,
                 base_config: ModelConfig | str | None = None, execution: str = "auto", head: nn.Module | None = None,
                 selector: nn.Module | None = None):
        super().__init__()
        if selector is not None and getattr(prompt, "num_prompts", None) is None:
            raise SoftPromptError(f"selector: picks a prompt of a bank per row, and {type(prompt).__name__} holds one "
                                  "prompt for every row; use a PromptBank, or no selector")
        if selector is not None and hasattr(selector, "check_source"):
            selector.check_source(prompt)  # e.g. one key per prompt
        base.requires_grad_(False)
        self.base = base
        self.prompt = prompt  # a prompt source (layers/source.py): plain, DePT, bank
        self.head = head  # None, or a trainable module on (hidden_states, attention_mask)
        self.selector = selector  # None, or each row's prompt of the bank from its input (selectors/)
        self.decision: dict | None = None  # the objective's fitted decision rule (per-label thresholds), saved with the adapter
        self.run_config: dict | None = None  # the config that trained a loaded adapter (its labels, its template)
        # set by distributed.prepare on a base sharded over processes: evaluation and generate run in lockstep;
        # base_probe, base_vocab_size: the adapter's facts of the embedding table, read while it was whole
        self.lockstep = False
        self.base_probe: list[float] | None = None
        self.base_vocab_size: int | None = None
        self.tokenizer = tokenizer
        self.kind = kind or detect_kind(base.config)
        if self.kind not in KIND_NAMES:
            raise SoftPromptError(f"model.kind: {self.kind!r} is not one of {sorted(KIND_NAMES)}")
        if base_config is None or isinstance(base_config, str):
            name = base_config or getattr(base.config, "_name_or_path", None) or ""
            base_config = ModelConfig(name_or_path=name)
        # what loads this base again (recorded in the adapter); the kind is the one in use
        self.base_config = replace(base_config, kind=self.kind)
        self._use_positions = self.kind == "causal" and _accepts(base, "position_ids")
        self._keep_logits = self.kind == "causal" and _accepts(base, "logits_to_keep")
        self.execution = execution  # auto | shared_prefix | concat, resolved by execution_mode()
        self._prompt_kv = shared_prefix.PromptKV()  # the prompts' cache for no-grad calls (eval, generate)
        self.execution_mode()  # a forced mode that cannot run fails here, not at the first batch

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_path: str | ModelConfig, num_virtual_tokens: int = 20, init: str = "vocab",
                        seed: int = 0, **prompt_kwargs):
        """Frozen base (a hub id, local dir or `ModelConfig`) plus a fresh plain prompt (see `PromptConfig`)."""
        from softprompt.layers import plain

        spec = ModelConfig(name_or_path=name_or_path) if isinstance(name_or_path, str) else name_or_path
        spec = replace(spec, **{k: prompt_kwargs.pop(k) for k in ("kind", "dtype") if k in prompt_kwargs})
        pcfg = plain.PromptConfig(num_virtual_tokens=num_virtual_tokens, init=init, **prompt_kwargs)  # checked first
        base, tokenizer, kind = load_base(spec)
        prompt = plain.build(pcfg, base.get_input_embeddings().weight, tokenizer, kind, seed)
        return cls(base, prompt, tokenizer, kind, spec, execution=pcfg.execution)

    @classmethod
    def from_adapter(cls, adapter_dir: str | Path, base: nn.Module | None = None, tokenizer=None):
        """The base recorded in the adapter (or the one given) plus the trained prompt (and head)."""
        saved = adapter.read(adapter_dir)  # every file checked before any model loads
        kind = saved.kind
        if base is None:
            if not saved.base_config.name_or_path:
                raise SoftPromptError(f"adapter: {str(adapter_dir)!r} names no base model; pass base=... explicitly")
            adapter.check_compression(saved, repr(str(adapter_dir)))  # the recorded compressed base, still the same
            base, loaded, kind = load_base(saved.base_config)
            tokenizer = tokenizer or loaded
        adapter.check_base(saved, base, repr(str(adapter_dir)))
        model = cls(base, saved.source, tokenizer, kind or detect_kind(base.config), saved.base_config, head=saved.head,
                    selector=saved.selector)
        model.decision = saved.meta.get("decision")
        model.run_config = saved.meta.get("config") if isinstance(saved.meta.get("config"), dict) else None
        return model.to(base.device)

    def save_adapter(self, out_dir: str | Path, **meta) -> Path:
        """A PEFT-loadable adapter dir plus our sidecar and a serving bundle (see adapter.py)."""
        return adapter.save(self, out_dir, **meta)

    export_peft = save_adapter

    @property
    def base_name(self) -> str:
        return self.base_config.name_or_path

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def learned_buffers(self) -> dict[str, torch.Tensor]:
        """State learned without gradients (a key selector's centroids), by name: checkpoints keep it with the
        trainable parameters."""
        return dict(self.selector.named_buffers(prefix="selector")) if self.selector is not None else {}

    @property
    def input_table(self) -> nn.Module:
        return self.base.get_input_embeddings()

    @property
    def device(self) -> torch.device:
        return next(self.prompt.parameters()).device

    def execution_mode(self) -> str:
        """"shared_prefix" or "concat": the one place the causal execution path is chosen (it can change
        when gradient checkpointing is switched on, so it is asked per call; see shared_prefix.choose).
        Per-row prompt sources take the same path: the shared prefix gives each row its own prompt's cache."""
        return shared_prefix.choose(self.execution, self.base, self.kind, self.prompt)

    def decoder_inputs(self, labels: torch.Tensor) -> torch.Tensor:
        """Seq2seq: the decoder's input ids for `labels` (shifted right, as the base's own loss would)."""
        return self.base.prepare_decoder_input_ids_from_labels(labels=labels)

    # -- forward -----------------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, right_padded: bool = False,
                prompt_index: torch.Tensor | None = None, output: str = "logits", **kwargs) -> SoftPromptOutput:
        """Any padding side; outputs aligned with the input.

        `output`: "logits" (the base with its LM head), "hidden" (the body only: last hidden states, the LM
        head never runs; seq2seq gives its encoder's) or "scores" (the body, then the model's head). It is
        an argument, not a method, so it reaches through DDP/FSDP wrappers, which expose forward alone.
        `labels` (HF-style, with "logits") also gives the text-to-text token loss. `prompt_index` (B,)
        picks each row's prompt from a bank. `right_padded=True` promises that no row has a pad before a
        real token (as `data.collate` builds batches): causal models then skip the check for left
        padding, whose host sync would stall a GPU once per step."""
        if output not in OUTPUTS:
            raise SoftPromptError(f"output: {output!r} is not one of {list(OUTPUTS)}")
        if attention_mask is None:
            attention_mask, right_padded = torch.ones_like(input_ids), True
        if labels is not None and output != "logits":
            raise SoftPromptError(f"labels: the token loss comes with output='logits'; with output={output!r} the "
                                  "objective scores the outputs itself (pass no labels)")
        if output == "scores" and self.head is None:
            raise SoftPromptError("output='scores': this model has no head; give the config a head section "
                                  "(or build SoftPromptModel with head=...)")
        if prompt_index is None and self.selector is not None:
            prompt_index = self.select(input_ids, attention_mask, labels)  # (B,): the bank's prompt per row
        if self.kind == "seq2seq" and labels is not None and output == "logits" and kwargs.get("decoder_input_ids") is None:
            kwargs["decoder_input_ids"] = self.decoder_inputs(labels)
        run = {"causal": self._causal, "seq2seq": self._seq2seq, "encoder": self._encoder}[self.kind]
        result = run(input_ids, attention_mask, right_padded, prompt_index, body=output != "logits", **kwargs)
        if output == "scores":
            result.scores = self.head(result.hidden_states, attention_mask)  # (B, num_outputs)
        if labels is not None and result.logits is not None:
            mask = attention_mask if self.kind == "causal" else None  # seq2seq labels follow the decoder, not this mask
            result.loss_sum, result.num_tokens = token_loss(result.logits, labels, self.kind, mask)
            result.loss = result.loss_sum / result.num_tokens.clamp(min=1)
        return result

    def select(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """Each row's prompt of the bank (B,), by the model's selector from the row's context (selectors/
        context_mask: never a text-to-text row's targets). Hard and without gradient; scored in eval mode, so
        dropout neither changes the choice nor draws from the RNG. In training mode the choice is the
        selector's `train_with` rule's, and a selector that learns from its rows (keys) sees them."""
        if self.selector is None:
            raise SoftPromptError("select: this model has no selector; build it with selector=..., or pass prompt_index")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        context = selectors.context_mask(attention_mask, labels, self.kind, self.selector.context_tokens)  # (B, L)
        training = self.training
        chooser = selectors.chooser(self.selector, training)
        with torch.no_grad(), shared_prefix.eval_mode(self):
            index = chooser.scores(self, input_ids, attention_mask, context, labels).argmax(dim=-1)  # (B,)
        if training:
            self.selector.observe(self, input_ids, context, index)
        return index

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      **kwargs) -> SoftPromptOutput:
        """The base's body only: last hidden states (B, L, D) aligned with the input; no LM head runs."""
        return self(input_ids, attention_mask, output="hidden", **kwargs)

    def head_outputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     **kwargs) -> SoftPromptOutput:
        """`hidden_states`, then the model's head on them: `scores` (B, num_outputs)."""
        return self(input_ids, attention_mask, output="scores", **kwargs)

    def _causal(self, input_ids, attention_mask, right_padded, prompt_index, body: bool, **kwargs) -> SoftPromptOutput:
        # Pads between the prompt and the tokens would take up key slots that sliding windows, local
        # attention and ALiBi count by column, so a left-padded row would differ from the same row
        # unpadded. Right-aligned rows have no such gap, and a causal row never attends to its trailing
        # pads; outputs go back to the input's order at the end.
        order = None
        if not right_padded and has_gaps(attention_mask):
            order, (input_ids, attention_mask) = right_align(input_ids, attention_mask, mask=attention_mask)
            # any other per-token input (e.g. token_type_ids) moves with its tokens
            kwargs = {k: _gather_rows(v, order) if torch.is_tensor(v) and v.shape[:2] == order.shape else v
                      for k, v in kwargs.items()}
        length = input_ids.shape[1]
        module = self.base.base_model if body else self.base  # the body: hidden states, no LM head
        if self.execution_mode() == "shared_prefix":  # each prompt runs once; only the L tokens run per row
            index = self.prompt.row_index(prompt_index, input_ids, attention_mask, self.input_table)  # None: one prompt
            tokens = self.prompt.token_embeds(input_ids, attention_mask, self.input_table, index)  # (B, L, D)
            kv = self._prompt_kv.get(self.base, self.prompt, tokens.dtype)
            out = shared_prefix.forward(module, kv, tokens, attention_mask, index, **kwargs)
        else:
            embeds, mask = self.prompt(input_ids, attention_mask, self.input_table, prompt_index)  # (B, p+L, D), (B, p+L)
            extra = {"position_ids": positions_from_mask(mask)} if self._use_positions else {}
            if self._keep_logits and not body:
                extra["logits_to_keep"] = length  # the LM head never sees the p virtual positions
            out = module(inputs_embeds=embeds, attention_mask=mask, use_cache=False, **extra, **kwargs)
        if body:
            result = SoftPromptOutput(hidden_states=out.last_hidden_state[:, -length:])  # (B, L, D), aligned
        else:
            result = SoftPromptOutput(logits=out.logits[:, -length:])  # (B, L, V); a no-op unless logits_to_keep was ignored
            if getattr(out, "hidden_states", None) is not None:
                result.hidden_states = out.hidden_states[-1][:, -length:]  # (B, L, D), aligned (for pooling)
        if order is not None:  # back to the caller's column order
            result.logits = _undo_order(result.logits, order) if result.logits is not None else None
            if result.hidden_states is not None:
                result.hidden_states = _undo_order(result.hidden_states, order)
        return result

    def _seq2seq(self, input_ids, attention_mask, right_padded, prompt_index, body: bool,
                 decoder_input_ids=None, **kwargs) -> SoftPromptOutput:
        order, (input_ids, attention_mask) = right_align(input_ids, attention_mask, mask=attention_mask)
        embeds, mask = self.prompt(input_ids, attention_mask, self.input_table, prompt_index)  # encoder only: (B, p+L, D)
        if body:  # the encoder's states for the real tokens, in the input's order
            out = self.base.get_encoder()(inputs_embeds=embeds, attention_mask=mask, **kwargs)
            p = self.prompt.num_virtual_tokens
            return SoftPromptOutput(hidden_states=_undo_order(out.last_hidden_state[:, p:], order))  # (B, L, D)
        out = self.base(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=decoder_input_ids,
                        use_cache=False, **kwargs)
        return SoftPromptOutput(logits=out.logits)  # (B, T_dec, V): aligned with the decoder input

    def _encoder(self, input_ids, attention_mask, right_padded, prompt_index, body: bool, **kwargs) -> SoftPromptOutput:
        p = self.prompt.num_virtual_tokens
        order, (input_ids, attention_mask) = right_align(input_ids, attention_mask, mask=attention_mask)
        embeds, mask = self.prompt(input_ids, attention_mask, self.input_table, prompt_index)  # (B, p+L, D)
        # No position_ids: rows are right-aligned, so the model's own numbering of [prompt; tokens] is the
        # one it gives real tokens there (RoBERTa/XLM-R start at padding_idx + 1, BERT at 0); ids from
        # the mask would start every model at 0.
        body_module = self.base.base_model
        if body:
            out = body_module(inputs_embeds=embeds, attention_mask=mask, **kwargs)
            return SoftPromptOutput(hidden_states=_undo_order(out.last_hidden_state[:, p:], order))  # (B, L, D)
        # A head model (e.g. BertForMaskedLM): the body's output loses its p virtual rows before the head
        # runs, so the head computes (B, L, ...) only. A bare body (AutoModel) is sliced after.
        trim = body_module.register_forward_hook(_drop_virtual_rows(p)) if body_module is not self.base else None
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
        return result

    # -- generation --------------------------------------------------------------------------------

    def prompted_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        prompt_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The embeddings and mask `generate` starts from: causal rows as [pads; prompt; tokens]
        (left-aligned, so new tokens append after the real ones), seq2seq encoder rows right-aligned."""
        if self.kind == "causal":
            embeds, mask = self.prompt(input_ids, attention_mask, self.input_table, prompt_index)  # (B, p+L, D)
            return left_align(embeds, mask, mask=mask)
        if self.kind == "seq2seq":
            _, (input_ids, attention_mask) = right_align(input_ids, attention_mask, mask=attention_mask)
            return self.prompt(input_ids, attention_mask, self.input_table, prompt_index)
        raise SoftPromptError("generate: encoder models do not generate; use a causal or seq2seq model")

    @torch.no_grad()
    def generate(self, inputs: str | list[str] | torch.Tensor, attention_mask: torch.Tensor | None = None,
                 prompt_index: torch.Tensor | None = None, **generate_kwargs):
        """Through the HF model's own `generate`. Strings in, strings out; ids in, new ids out.
        `prompt_index` (B,) picks each row's prompt from a bank."""
        if self.lockstep:  # a base sharded over processes: each decoding step needs all of them, so all go on
            generate_kwargs.setdefault("synced_gpus", True)  # until every one is done (distributed.py)
        texts = [inputs] if isinstance(inputs, str) else inputs
        if isinstance(texts, list):
            if self.tokenizer is None:
                raise SoftPromptError("generate: pass token ids, or build the model with a tokenizer")
            enc = self.tokenizer(texts, return_tensors="pt", padding=True)
            input_ids, attention_mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        else:
            input_ids = texts.to(self.device)
            attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(self.device)
        if prompt_index is None and self.selector is not None:
            prompt_index = self.select(input_ids, attention_mask)  # (B,): from the input, as forward chooses
        kwargs = self._generate_kwargs(generate_kwargs, input_ids.shape[1])
        index = self.prompt.row_index(prompt_index, input_ids, attention_mask, self.input_table)  # (B,) or None
        if (self.kind == "causal" and self.execution_mode() == "shared_prefix" and not self._gap_blocks_cache(attention_mask)
                and not shared_prefix.candidate_decoding(kwargs, self.base.generation_config)):
            # [prompt; pads; tokens]: the prompt's cache is computed once and shared by every call and row
            input_ids, attention_mask = left_align(input_ids, attention_mask, mask=attention_mask)
            embeds, mask = self.prompt(input_ids, attention_mask, self.input_table, prompt_index)  # (B, p+L, D)
            kv = self._prompt_kv.get(self.base, self.prompt, embeds.dtype)
            prepared = shared_prefix.generation_inputs(kv, embeds, mask, kwargs, self.base.generation_config, index)
        else:
            embeds, mask = self.prompted_inputs(input_ids, attention_mask, prompt_index)
            prepared = {"inputs_embeds": embeds, "attention_mask": mask}
        with self._offset_new_tokens(attention_mask, index):
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
    def _offset_new_tokens(self, attention_mask: torch.Tensor, index: torch.Tensor | None = None):
        """While `generate` runs, add the token offset (e.g. DePT's) to the tokens it generates, as training
        adds it to every real token a row holds: generated token j of a row with n source tokens takes the
        row the offset gives real token n + j. `generate` embeds new ids through the base's own table, so a
        forward hook on that table does it, for this call only.

        The row count comes from the attention mask `generate` passes to each forward (a pre-hook keeps it):
        the prompt's p columns are a row's first p real columns in both layouts, so the real columns after
        them are the tokens. Reading it each step (rather than counting calls) stays right when candidate
        decoding (assistants, prompt lookup) proposes tokens and then rejects some. `index`: each row's prompt
        of a bank whose members have offsets of their own."""
        if not self.prompt.offsets_tokens or self.kind != "causal":
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
            offset = self.prompt.generation_offset(tokens, index)  # index: each row's prompt (a bank)
            if offset is None:
                return out
            rows, position = offset
            return apply_offset(out, rows, position[:, -out.shape[1]:])  # (B', k, D)

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
