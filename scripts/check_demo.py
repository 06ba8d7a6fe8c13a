#!/usr/bin/env python
"""Standalone check of the embedded demo (plain torch + transformers and build_demo's decoding; no softprompt imports).

    python scripts/check_demo.py

Loads softprompt/data/demo/model (model + tokenizer), measures greedy exact-match accuracy on
task/test.jsonl with no prompt and with the explicit attribute marker (`color : ` before the source:
shows the base model knows the facts), trains a soft prompt (p vectors prepended to inputs_embeds,
base frozen, LM loss on the target tokens + </s> only) on task/train.jsonl, and measures the test
accuracy again with the prompt.

Format: row = `<s> source target </s>`, i.e. `tokenizer(source)` (adds <s>) followed by
`tokenizer(target, add_special_tokens=False)` and </s>; right padding; position ids are
cumsum(mask) - 1 over the prompt + text mask. Exact match compares the greedy continuation, cut at
</s> and stripped, with the stripped target.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from build_demo import embed_batch, greedy  # scripts/ is on sys.path when run as a script

DEMO = Path(__file__).resolve().parents[1] / "softprompt" / "data" / "demo"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def exact_match(model, tok, prompt, rows: list[dict], prefix: str = "") -> tuple[float, list[str]]:
    preds = greedy(model, tok, [prefix + r["source"] for r in rows], prompt=prompt, max_new=6)
    acc = sum(p.strip() == r["target"].strip() for p, r in zip(preds, rows)) / len(rows)
    return acc, preds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=DEMO)
    ap.add_argument("--prompt-length", type=int, default=10)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--marker", default="color : ", help="explicit task marker put before the source")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    t0 = time.time()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.demo / "model")
    model = AutoModelForCausalLM.from_pretrained(args.demo / "model", dtype=torch.float32).eval()
    for q in model.parameters():
        q.requires_grad_(False)
    train, test = (read_jsonl(args.demo / "task" / f"{s}.jsonl") for s in ("train", "test"))
    n_base = sum(q.numel() for q in model.parameters())
    print(f"model: {type(model).__name__}, {n_base:,} parameters (frozen); tokenizer: {type(tok).__name__}, "
          f"{len(tok)} tokens; task: {len(train)} train / {len(test)} test rows; load {time.time() - t0:.1f}s")

    t = time.time()
    acc_none, preds = exact_match(model, tok, None, test)
    acc_marker, _ = exact_match(model, tok, None, test, args.marker)
    print(f"before: no prompt {acc_none:.1%} | with marker {args.marker!r} {acc_marker:.1%}  ({time.time() - t:.1f}s)")
    print("  e.g. " + "; ".join(f"{r['source']!r} -> {p!r} (want {r['target']!r})" for r, p in zip(test[:3], preds)))

    # soft prompt, initialised from embeddings of sampled (non-special) vocabulary rows
    emb = model.get_input_embeddings().weight
    special = set(tok.all_special_ids)
    vocab = [i for i in range(emb.shape[0]) if i not in special]
    rows = random.Random(args.seed).sample(vocab, args.prompt_length)
    prompt = torch.nn.Parameter(emb[rows].detach().clone())
    n_train = prompt.numel()
    opt = torch.optim.AdamW([prompt], lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 10) * max(0.0, 1 - s / args.steps))

    eos = tok.eos_token_id
    items = []
    for r in train:
        src = tok(r["source"])["input_ids"]
        tgt = tok(r["target"], add_special_tokens=False)["input_ids"] + [eos]
        items.append((src + tgt, [-100] * len(src) + tgt))
    rng = random.Random(args.seed)
    order: list[int] = []
    t = time.time()
    for step in range(1, args.steps + 1):
        if len(order) < args.batch_size:
            perm = list(range(len(items)))
            rng.shuffle(perm)
            order += perm
        batch = [items[i] for i in order[:args.batch_size]]
        del order[:args.batch_size]
        x, mask, pos = embed_batch(model, prompt, [b[0] for b in batch], tok.pad_token_id)
        labels = torch.full(mask.shape, -100, dtype=torch.long)
        for r, (_, lab) in enumerate(batch):
            labels[r, args.prompt_length:args.prompt_length + len(lab)] = torch.tensor(lab)
        logits = model(inputs_embeds=x, attention_mask=mask, position_ids=pos).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step == 1 or step % 25 == 0 or step == args.steps:
            print(f"  step {step:4d}  loss {loss.item():.4f}  ({time.time() - t:.1f}s)", flush=True)
    train_s = time.time() - t

    t = time.time()
    acc_after, preds = exact_match(model, tok, prompt.detach(), test)
    print(f"after:  soft prompt {acc_after:.1%}  ({time.time() - t:.1f}s)")
    print("  e.g. " + "; ".join(f"{r['source']!r} -> {p!r} (want {r['target']!r})" for r, p in zip(test[:3], preds)))
    print(f"trainable parameters: {n_train:,} (p={args.prompt_length} x {prompt.shape[1]}); "
          f"{args.steps} steps x batch {args.batch_size}, AdamW lr {args.lr}")
    print(f"test accuracy: before {acc_none:.1%} -> after {acc_after:.1%}  (marker {acc_marker:.1%}); "
          f"prompt training {train_s:.1f}s, total wall time {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
