"""Recovery of a compressed model with a soft prompt (Compress-then-Prompt, Xu et al. 2023,
https://arxiv.org/abs/2305.11186; research/methods.md §4.3): the prompt learns, on the frozen compressed
model, to predict generic text, cut into fixed-length blocks with the prompt prepended to every block; and,
when the dense model is at hand, to match its next-token distribution (knowledge distillation, Hinton et
al. 2015, https://arxiv.org/abs/1503.02531), alone or mixed with the LM loss.

Blocks: each row's `text_field` is a document, tokenized with the tokenizer's own special tokens (a Llama
BOS) and ended by EOS; all documents of a split are concatenated and cut into `block_size` tokens; the tail shorter than a block is dropped (as the paper's
C4 loader does). Every block is a full row: no padding, so the shared-prefix path runs the prompt once per
batch (`SoftPromptModel.execution_mode`).

Which tokens are scored (the same for the loss, eval and `perplexity`, with or without a prompt): tokens
2..L of every block, each predicted from the tokens before it in the block. The first token is never
scored: a prompt could predict it from its last position, a model without a prompt cannot, and the token
sets must be identical to compare perplexities. A bank whose selector reads a block's first c tokens to choose
its prompt (selectors/: `context_tokens`) is evaluated on tokens c+1..L only, so no choice has seen the tokens it
is scored on (its training loss still covers tokens 2..L: training is not a measurement). The paper's loss sums over a block's tokens; ours is the
per-token mean (the loop normalises by scored tokens), so grad-clip 1.0 is not always active
(methods.md §4.5).

Loss: (1 - kd_weight) * CE + kd_weight * T^2 * KL(teacher || student), both summed over the scored
positions. The teacher is frozen and runs without grad. Its logits are never held for the whole batch:
its body's last hidden states are, and its LM head runs on `kd_chunk` positions at a time, each chunk's KL
summed before the next is computed. That is exact when the teacher's logits are its LM head applied to
those hidden states, which is probed when the teacher loads; a teacher that post-processes its logits
(e.g. soft-capping) takes the plain twin, full logits (`kd_chunk: 0` forces it; tests check both agree).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from softprompt.data.loading import limited
from softprompt.errors import ConfigError, SoftPromptError
from softprompt.objectives.lm import perplexity_of, scored_targets
from softprompt.sharded_eval import EvalParts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoverConfig:
    type: str = "recover"
    text_field: str = "text"  # the data column holding generic text (C4's `text`)
    block_size: int = 1024  # tokens per block (the paper: 1024)
    kd_weight: float = 0.0  # 0: LM loss only; 1: distillation only; between: the mix
    # the dense model to distil from: a hub id, a local dir, "demo", or "source": the model the base's
    # compression record (compression.json) was compressed from. None: no teacher
    teacher: str | None = None
    teacher_dtype: str = "float32"
    temperature: float = 1.0  # softmax temperature of both distributions in the KL (scaled back by T^2)
    kd_chunk: int = 1024  # positions whose teacher logits exist at once; 0: all of the batch (the plain twin)

    def __post_init__(self):
        if self.block_size < 2:
            raise ConfigError(f"objective.block_size: must be >= 2 (one token predicts the next), got {self.block_size}")
        if not 0 <= self.kd_weight <= 1:
            raise ConfigError(f"objective.kd_weight: must be in [0, 1] (0: LM loss only, 1: distillation only), got "
                              f"{self.kd_weight}")
        if self.kd_weight > 0 and not self.teacher:
            raise ConfigError("objective.teacher: distillation (kd_weight > 0) needs the dense model; give its path or "
                              "hub id, or 'source' for the model the base was compressed from")
        if self.temperature <= 0:
            raise ConfigError(f"objective.temperature: must be > 0, got {self.temperature}")
        if self.kd_chunk < 0:
            raise ConfigError(f"objective.kd_chunk: must be >= 0 (0: no chunking), got {self.kd_chunk}")


def check(cfg: RecoverConfig, full) -> None:
    """Cross-section checks: blocks come from whole splits, so the eval rows cannot be carved from train rows
    (their blocks would straddle rows of both); a selector must leave tokens of every block unread to score."""
    if full.selector is not None and full.selector.type == "oracle":
        raise ConfigError("selector.type: oracle chooses each block's prompt by the loss on the very tokens it is then "
                          "scored on, so its perplexity measures nothing; train with selector.type attention or key "
                          "(selector.train_with: oracle assigns training blocks by loss), and use the oracle for analysis")
    context = getattr(full.selector, "context_tokens", 0) if full.selector is not None else 0
    if context is None or context >= cfg.block_size:
        raise ConfigError(f"selector.context_tokens: every token of a block is a target of the recover objective, so a "
                          f"selector reading {'all of them' if context is None else context} would choose with the tokens "
                          f"it is scored on; set selector.context_tokens below objective.block_size={cfg.block_size} "
                          "(e.g. 32): evaluation then scores the tokens after them")
    if full.data.validation_fraction:
        raise ConfigError("data.validation_fraction: the recover objective cuts each split's text into blocks; give a "
                          "validation split of its own (data.eval_split) instead of carving one")


def complete(cfg, rows_loader):
    """Resolve `teacher: source` to the model the base's compression record names, so the run records it."""
    from softprompt.compress import read_record
    from softprompt.loading import resolve_model_path

    objective = cfg.objective
    if objective.teacher != "source":
        return cfg
    record = read_record(resolve_model_path(cfg.model.name_or_path))
    if record is None:
        raise SoftPromptError(f"objective.teacher: 'source' reads the base's compression record, and "
                              f"{cfg.model.name_or_path!r} has none (no compression.json); name the dense model instead")
    return replace(cfg, objective=replace(objective, teacher=record["source"]["name_or_path"]))


def kd_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * sum over rows of KL(softmax(t/T) || softmax(s/T)); logits (N, V). Zero when they are equal."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="sum") * temperature ** 2


def split_blocks(rows, text_field: str, tokenizer, block_size: int, split: str) -> list[dict]:
    """A split's rows as `block_size`-token blocks of their concatenated text (see the module docstring)."""
    if text_field not in rows.column_names:
        raise SoftPromptError(f"objective.text_field: {text_field!r} is not a column of the {split!r} split; its columns "
                              f"are {sorted(rows.column_names)}")
    stream: list[int] = []
    eos = tokenizer.eos_token_id
    for i, text in enumerate(rows[text_field]):
        if not isinstance(text, str):
            raise SoftPromptError(f"data: {split} row {i} has no text in column {text_field!r} ({text!r}); fill it in "
                                  "or drop the row")
        # each document as the model saw documents in pretraining: the tokenizer's own special tokens (Llama's
        # BOS, none for GPT-2), then EOS where it adds none, so documents never run into each other
        ids = tokenizer(text, verbose=False)["input_ids"]
        stream += ids + ([eos] if eos is not None and (not ids or ids[-1] != eos) else [])
    if len(stream) < block_size:
        raise SoftPromptError(f"data: the {split!r} split holds {len(stream)} tokens, fewer than one block of "
                              f"objective.block_size={block_size}; give more text or lower block_size")
    return [{"input_ids": stream[s:s + block_size]} for s in range(0, len(stream) - block_size + 1, block_size)]


def collate_blocks(items: list[dict]) -> dict[str, torch.Tensor]:
    ids = torch.tensor([it["input_ids"] for it in items], dtype=torch.long)  # (B, L): equal lengths, no padding
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def selection_reads(model) -> int:
    """How many leading tokens of a block a model's prompt choice reads (its selector's context), 0 without one."""
    selector = getattr(model, "selector", None)
    return 0 if selector is None else int(selector.context_tokens or 0)


def block_targets(batch: dict[str, torch.Tensor], read: int = 0) -> torch.Tensor:
    """The token each position of a block is scored against (B, L), -100 where none: tokens 2..L, and none of
    tokens 1..`read` (what a selector read to choose the prompt)."""
    targets = scored_targets(batch["labels"], "causal", batch["attention_mask"])  # (B, L): [t] is token t+2
    targets[:, :max(read - 1, 0)] = -100
    return targets


@torch.no_grad()
def perplexity(logits_fn, items: list[dict], batch_size: int, device, read: int = 0) -> dict[str, float]:
    """Token-weighted NLL and perplexity of `logits_fn(input_ids, attention_mask) -> (B, L, V)` over the blocks
    `items`, scoring tokens 2..L of each block (the protocol of the module docstring), with their count; tokens
    1..`read` (what a selector read to choose the prompt) are not scored either."""
    total, count = nll_sum(logits_fn, items, batch_size, device, read)
    nll = total / max(count, 1)
    return {"nll": nll, "ppl": perplexity_of(nll), "tokens": count}


def nll_sum(logits_fn, items: list[dict], batch_size: int, device, read: int = 0) -> tuple[float, int]:
    """(summed NLL, scored tokens) over `items`: what `perplexity` divides (shards of rows add up)."""
    nlls, counts = block_nlls(logits_fn, items, batch_size, device, read)
    return float(sum(nlls)), int(sum(counts))


def block_nlls(logits_fn, items: list[dict], batch_size: int, device, read: int = 0) -> tuple[list[float], list[int]]:
    """Each block's summed NLL and scored-token count (the protocol of `perplexity`), for paired comparisons."""
    nlls, counts = [], []
    for start in range(0, len(items), batch_size):
        batch = {k: v.to(device) for k, v in collate_blocks(items[start:start + batch_size]).items()}
        targets = block_targets(batch, read)  # (B, L)
        logits = logits_fn(batch["input_ids"], batch["attention_mask"])  # (B, L, V)
        token_nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100,
                                    reduction="none").view(targets.shape)  # (B, L), 0 where not scored
        nlls += token_nll.sum(1).tolist()
        counts += (targets != -100).sum(1).tolist()
    return nlls, counts


class Teacher:
    """The frozen dense model, loaded on first use on the batch's device, with the chunked KD's head check."""

    def __init__(self, name: str, dtype: str):
        self.name, self.dtype = name, dtype
        self.model = None
        self.chunkable = False

    def get(self, device, vocab: int):
        if self.model is None:
            from softprompt.loading import ModelConfig, load_base

            model, _, _ = load_base(ModelConfig(name_or_path=self.name, kind="causal", dtype=self.dtype))
            model.eval().to(device)
            if model.get_output_embeddings().weight.shape[0] != vocab:
                raise SoftPromptError(f"objective.teacher: {self.name!r} predicts "
                                      f"{model.get_output_embeddings().weight.shape[0]} tokens, the student {vocab}; "
                                      "distil from a model with the student's vocabulary (its dense original)")
            self.model, self.chunkable = model, head_reproduces_logits(model)
            if not self.chunkable:
                log.info("objective.teacher: %s post-processes its logits; distillation uses full logits", self.name)
        return self.model


@torch.no_grad()
def head_reproduces_logits(model) -> bool:
    """Whether `model`'s logits are its output embedding applied to its body's last hidden states (what the
    chunked KD computes), checked on a probe input rather than assumed from the architecture's name."""
    ids = torch.arange(1, 9, device=model.device).remainder(model.get_output_embeddings().weight.shape[0])[None]
    full = model(input_ids=ids).logits
    head = model.get_output_embeddings()(model.base_model(input_ids=ids).last_hidden_state)
    return full.shape == head.shape and torch.allclose(full.float(), head.float(), rtol=1e-4, atol=1e-4)


class Recover:
    uses_head = False
    default_metric = "eval_ppl"  # the paper keeps the prompt with the best validation perplexity

    def __init__(self, cfg: RecoverConfig):
        self.cfg = cfg
        self.teacher = Teacher(cfg.teacher, cfg.teacher_dtype) if cfg.teacher else None
        self.shown_metrics = ("eval_loss", "eval_ppl", "eval_base_ppl") + (
            ("eval_kd", "eval_gap_closed") if self.teacher is not None else ())
        # the base without a prompt and the teacher score the same eval blocks every time: once per block list
        self._references: dict[tuple, dict[str, float]] = {}

    def check_model(self, kind: str, has_head: bool, name: str) -> None:
        if kind != "causal":
            raise SoftPromptError(f"objective recover: trains a prompt on a causal LM's next-token loss; {name!r} is "
                                  f"{kind} (set model.kind, or pick a decoder-only model)")
        if has_head:
            raise SoftPromptError("head: the recover objective scores the base's own LM head; remove the head section")

    def encode(self, rows, tokenizer, data_cfg, kind: str, split: str) -> list[dict]:
        # the row limits count documents, cut before packing: a limit never splits a document
        return split_blocks(limited(rows, data_cfg, split), self.cfg.text_field, tokenizer, self.cfg.block_size, split)

    def collate(self, items: list[dict], pad_id: int, kind: str) -> dict[str, torch.Tensor]:
        return collate_blocks(items)

    def weight(self, batch: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
        return (scored_targets(batch["labels"], "causal", batch["attention_mask"]) != -100).sum()

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # blocks are full rows: no pads anywhere (right_padded skips the left-padding check's host sync)
        if self.cfg.kd_weight == 0:
            return model(**batch, right_padded=True).loss_sum
        out = model(batch["input_ids"], batch["attention_mask"], right_padded=True)  # logits (B, L, V)
        targets = scored_targets(batch["labels"], "causal", batch["attention_mask"])  # (B, L)
        ce = F.cross_entropy(out.logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")
        kd = self.distill(out.logits, batch, targets != -100)
        return (1 - self.cfg.kd_weight) * ce + self.cfg.kd_weight * kd

    def distill(self, student_logits: torch.Tensor, batch: dict, scored: torch.Tensor) -> torch.Tensor:
        """Summed T^2 * KL over the scored positions (B, L), the teacher's logits made `kd_chunk` at a time."""
        teacher = self.teacher.get(student_logits.device, student_logits.shape[-1])
        student = student_logits.flatten(0, 1)[scored.flatten()]  # (N, V): the scored positions only
        chunk = self.cfg.kd_chunk
        if not (chunk and self.teacher.chunkable):  # the plain twin: the teacher's full logits
            with torch.no_grad():
                full = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, L, V)
            return kd_sum(student, full.flatten(0, 1)[scored.flatten()], self.cfg.temperature)  # with grad: outside
        with torch.no_grad():
            hidden = teacher.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            hidden = hidden.last_hidden_state.flatten(0, 1)[scored.flatten()]  # (N, D)
        head = teacher.get_output_embeddings()
        total = student.new_zeros((), dtype=torch.float32)
        for start in range(0, student.shape[0], chunk):
            with torch.no_grad():
                logits = head(hidden[start:start + chunk])  # (n, V): this chunk's teacher logits only
            total = total + kd_sum(student[start:start + chunk], logits, self.cfg.temperature)
        return total

    def metric_names(self) -> list[str]:
        # eval_gap_closed (with a teacher, where the base is worse than it) is shown, not a selection metric: it
        # orders prompts as eval_ppl does, and a run whose base has no gap to close would lack it
        names = ["eval_loss", "eval_ppl", "eval_base_ppl"]
        return names + (["eval_kd", "eval_teacher_ppl"] if self.teacher is not None else [])

    def greater_is_better(self, metric: str) -> bool:
        return False  # loss, perplexity and KL alike

    def evaluate(self, model, items: list[dict], batch_size: int) -> dict[str, float]:
        return self.eval_metrics(self.eval_parts(model, items, batch_size), items)

    @torch.no_grad()
    def eval_parts(self, model, items: list[dict], batch_size: int) -> EvalParts:
        """Summed NLL over the scored tokens and their count; the same for the base without a prompt and, with a
        teacher, for the teacher (the references a recovery is judged against); with a teacher, the summed KD."""
        was_training = model.training
        model.eval()
        try:
            read = selection_reads(model)
            logits = lambda ids, mask: model(ids, mask, right_padded=True).logits  # noqa: E731
            total, count = nll_sum(logits, items, batch_size, model.device, read=read)
            sums = {"nll": total, "tokens": count, **self.references(model, items, batch_size, read)}
            if self.teacher is not None:
                sums["kd"], sums["kd_tokens"] = self.kd_sum(model, items, batch_size)
        finally:
            model.train(was_training)
        return EvalParts(sums)

    def references(self, model, items: list[dict], batch_size: int, read: int) -> dict[str, float]:
        """Summed NLL of the base without the prompt (`base_nll`) and of the teacher (`teacher_nll`) over `items`,
        on the tokens the prompted model is scored on; computed on the first eval of a block list, then reused
        (the base and the teacher are frozen). Every process of a sharded eval computes its shard at that eval."""
        key = (tuple(map(id, items)), read)  # the eval keeps its block lists (and so these ids) for the whole run
        if key not in self._references:
            base = model.base
            sums = {"base_nll": nll_sum(lambda ids, mask: base(input_ids=ids, attention_mask=mask).logits, items,
                                        batch_size, model.device, read)[0]}
            if self.teacher is not None:
                teacher = self.teacher.get(model.device, base.get_output_embeddings().weight.shape[0])
                sums["teacher_nll"] = nll_sum(lambda ids, mask: teacher(input_ids=ids, attention_mask=mask).logits,
                                              items, batch_size, model.device, read)[0]
            self._references[key] = sums
        return self._references[key]

    def eval_metrics(self, parts: EvalParts, items: list[dict]) -> dict[str, float]:
        tokens = max(parts.sums["tokens"], 1)
        nll, base = parts.sums["nll"] / tokens, parts.sums["base_nll"] / tokens
        metrics = {"eval_loss": nll, "eval_ppl": perplexity_of(nll), "eval_base_ppl": perplexity_of(base)}
        if self.teacher is not None:
            metrics["eval_kd"] = parts.sums["kd"] / max(parts.sums["kd_tokens"], 1)
            teacher = parts.sums["teacher_nll"] / tokens
            metrics["eval_teacher_ppl"] = perplexity_of(teacher)
            if base > teacher:  # the share of the base's gap to the teacher the prompt closes (recovery_report's)
                metrics["eval_gap_closed"] = (base - nll) / (base - teacher)
        return metrics

    @torch.no_grad()
    def kd_sum(self, model, items: list[dict], batch_size: int) -> tuple[float, int]:
        """(summed T^2 * KL to the teacher, scored positions) over `items`."""
        total, count = 0.0, 0
        for start in range(0, len(items), batch_size):
            batch = {k: v.to(model.device) for k, v in collate_blocks(items[start:start + batch_size]).items()}
            scored = block_targets(batch, selection_reads(model)) != -100  # (B, L)
            logits = model(batch["input_ids"], batch["attention_mask"], right_padded=True).logits
            total += float(self.distill(logits, batch, scored))
            count += int(scored.sum())
        return total, count


def build(cfg: RecoverConfig) -> Recover:
    return Recover(cfg)
