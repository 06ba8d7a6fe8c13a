#!/usr/bin/env python
"""Pretrain a larger model of the embedded demo's family (the same synthetic world, pretraining recipe
and BPE tokenizer; a 7.5M-parameter Llama, 4x384, instead of 1M, 4x128), trained long enough to recall
most facts (marker accuracy ~0.6), so compression and recovery have knowledge to lose and win back.

    python scripts/build_demo_large.py      # ~9.5 min on 2 idle CPU cores (measured: 567 s), fully offline

Writes $SOFTPROMPT_CACHE/demo-large (default ~/.cache/softprompt/demo-large; --out), outside git.
The build goes to a temporary directory next to it, renamed into place at the end, so a killed build
leaves nothing half-written:

    model/          LlamaForCausalLM (safetensors) + the demo's tokenizer + generation_config
    text/*.jsonl    {"text": "color : blick = red ; dax = blue"}: one corpus line per row. train = the
                    pretraining corpus; validation / test = held-out lines (new lists and filler
                    sentences) of fresh corpora of the same world
    task/*.jsonl    {"source": "color : blick =", "target": " red"}: fact recall with explicit
                    attribute markers, all five attributes of the nouns of the demo's task splits
    report.json     parameters, config, pretraining time and loss, and, dense and after a crude
                    stand-in compression (per Linear: 50% magnitude pruning, then 4-bit
                    round-to-nearest), the perplexity on text/validation (packed blocks, tokens 2.. scored) and marker
                    accuracy per split

Pretraining packs the lines, each `<s> line </s>`, into 128-token blocks (reshuffled every epoch), the
way the recovery objective and `softprompt perplexity` cut text. Why: a model pretrained one line per
sequence (build_demo.py's way) scored 5.2 perplexity per line but 29 on packed blocks, a format shift
so large that any prompt "recovered" far more than compression had cost. Small batches (2 blocks)
buy enough optimizer steps to learn the facts in the time budget. Everything is seeded and runs with
deterministic algorithms and a fixed number of threads (--threads, default 2).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_demo  # noqa: E402  (scripts/ is not a package)
from build_demo import ATTRIBUTES  # noqa: E402

DEMO_MODEL = build_demo.OUT / "model"  # its tokenizer is reused, so both models share the vocabulary
DEMO_SEED = 1234  # build_demo.py's default --seed: the embedded demo's world
# build_demo.py's corpus recipe with a third of its filler: filler states no facts, and the time
# budget buys only 9 epochs of this model, so the facts get a larger share of them.
CORPUS = dict(unmarked_reps=2, marked_reps=1, list_reps=2, n_filler=1000)
HELDOUT_SEEDS = {"validation": DEMO_SEED + 100, "test": DEMO_SEED + 200}


def default_out() -> Path:
    cache = os.environ.get("SOFTPROMPT_CACHE") or Path.home() / ".cache" / "softprompt"
    return Path(cache) / "demo-large"


def text_splits(nouns, facts) -> dict[str, list[str]]:
    """train: the pretraining corpus; validation / test: the lines of fresh corpora of the same world
    (other seeds) that the pretraining corpus lacks, i.e. new lists and filler. Single fact lines are
    left out there: every one of them is also a pretraining line."""
    train = build_demo.build_corpus(nouns, facts, DEMO_SEED, **CORPUS)
    seen = set(train)
    splits = {"train": train}
    for split, seed in HELDOUT_SEEDS.items():
        splits[split] = [l for l in build_demo.build_corpus(nouns, facts, seed, **CORPUS) if l not in seen]
    return splits


def marker_task(nouns, facts) -> dict[str, list[dict]]:
    """build_demo's noun splits, each noun with all five attributes behind their explicit markers."""
    out = {}
    for split, rows in build_demo.build_task(nouns, facts).items():
        words = [r["source"].removesuffix(" =") for r in rows]
        out[split] = [{"source": f"{a} : {w} =", "target": f" {facts[w][a]}"} for w in words for a in ATTRIBUTES]
    return out


def write_jsonl(path: Path, rows: list[dict]):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_model(tok, args):
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        initializer_range=0.02,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id, do_sample=False, max_new_tokens=8)
    return model


def packed_blocks(seqs: list[list[int]], block_size: int, rng: random.Random | None) -> list[list[int]]:
    """The lines (shuffled when rng is given), each `<s> line </s>`, concatenated and cut into
    block_size-token blocks, the tail dropped: exactly how the recovery objective and `softprompt
    perplexity` cut text, so the dense model is measured and recovered on the distribution it learned."""
    order = list(range(len(seqs)))
    if rng is not None:
        rng.shuffle(order)
    stream = [t for i in order for t in seqs[i]]
    return [stream[s:s + block_size] for s in range(0, len(stream) - block_size + 1, block_size)]


def pretrain(model, seqs: list[list[int]], args) -> tuple[float, float]:
    """Packed causal-LM pretraining: every epoch reshuffles the lines and re-packs them into blocks, so
    a line is seen after ever different ones; AdamW with warmup and cosine decay.
    Returns (last epoch's mean loss, seconds)."""
    rng = random.Random(args.seed)
    steps_per_epoch = len(packed_blocks(seqs, args.block_size, None)) // args.batch_size
    total = steps_per_epoch * args.epochs
    warmup = min(200, total // 10)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    print(f"pretraining: {sum(map(len, seqs)):,} tokens/epoch, {args.epochs} epochs, "
          f"{total} steps of {args.batch_size} blocks of {args.block_size} tokens", flush=True)
    t0 = time.time()
    model.train()
    for epoch in range(args.epochs):
        blocks = packed_blocks(seqs, args.block_size, rng)
        run = 0.0
        for s in range(steps_per_epoch):
            ids = torch.tensor(blocks[s * args.batch_size:(s + 1) * args.batch_size])  # (B, block_size)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            run += loss.item()
        epoch_loss = run / steps_per_epoch
        print(f"  epoch {epoch + 1}/{args.epochs}: loss {epoch_loss:.4f} ({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    return epoch_loss, time.time() - t0


@torch.no_grad()
def perplexity(model, seqs: list[list[int]], block_size: int, batch_size: int = 32) -> float:
    """exp of the mean next-token NLL over the held-out lines packed in order into blocks (tokens
    2..block_size of each block scored): `softprompt perplexity`'s protocol without a prompt."""
    blocks = packed_blocks(seqs, block_size, None)
    nll, count = 0.0, 0
    for s in range(0, len(blocks), batch_size):
        ids = torch.tensor(blocks[s:s + batch_size])  # (B, block_size)
        logits = model(input_ids=ids).logits[:, :-1]
        nll += F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").item()
        count += ids[:, 1:].numel()
    return math.exp(nll / count)


@torch.no_grad()
def stand_in_compress(model):
    """A copy with every Linear but lm_head (tied to the embeddings) 50% magnitude-pruned, then
    quantized to 4 bits round-to-nearest per output channel (symmetric, absmax scale; zeros stay 0).
    A crude stand-in for a real compressor, only to show that compression hurts this model."""
    out = copy.deepcopy(model)
    for name, mod in out.named_modules():
        if isinstance(mod, torch.nn.Linear) and name != "lm_head":
            w = mod.weight
            flat = w.view(-1)
            flat[flat.abs().argsort()[:flat.numel() // 2]] = 0
            scale = (w.abs().amax(dim=1, keepdim=True) / 7).clamp(min=1e-12)
            w.copy_((w / scale).round().clamp(-8, 7) * scale)
    return out


def marker_accuracy(model, tok, rows: list[dict]) -> float:
    """Greedy exact match of the first generated token: every attribute value is one token, and what
    follows it in the corpus varies (</s>, a newline, a list's ` ;`)."""
    preds = build_demo.greedy(model, tok, [r["source"] for r in rows], max_new=1)
    return sum(p.strip() == r["target"].strip() for p, r in zip(preds, rows)) / len(rows)


def measure(model, tok, held_out: list[list[int]], task: dict[str, list[dict]], block_size: int) -> dict:
    return {
        "validation_ppl": round(perplexity(model, held_out, block_size), 4),
        "marker_accuracy": {split: round(marker_accuracy(model, tok, rows), 4) for split, rows in task.items()},
    }


def write_build(tmp: Path, model, tok, text: dict[str, list[str]], task: dict[str, list[dict]], report: dict):
    model.save_pretrained(tmp / "model", safe_serialization=True)
    tok.save_pretrained(tmp / "model")
    for split, lines in text.items():
        write_jsonl(tmp / "text" / f"{split}.jsonl", [{"text": line} for line in lines])
    for split, rows in task.items():
        write_jsonl(tmp / "task" / f"{split}.jsonl", rows)
    (tmp / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    for f in [tmp, *tmp.rglob("*")]:
        f.chmod(0o755 if f.is_dir() else 0o644)  # mkdtemp and save_pretrained make private files


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=default_out())
    ap.add_argument("--seed", type=int, default=1234, help="model init and data order (the world is the demo's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--intermediate", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=9)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--batch-size", type=int, default=2, help="blocks per step")
    ap.add_argument("--block-size", type=int, default=128, help="tokens per packed block (bench_recovery's)")
    args = ap.parse_args()

    t0 = time.time()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(DEMO_MODEL)
    nouns, facts = build_demo.build_world(DEMO_SEED)
    text = text_splits(nouns, facts)
    task = marker_task(nouns, facts)
    print(f"text: {', '.join(f'{k} {len(v)}' for k, v in text.items())} lines; "
          f"task: {', '.join(f'{k} {len(v)}' for k, v in task.items())} rows", flush=True)

    model = make_model(tok, args)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: Llama {args.layers}x{args.hidden} ({args.heads} heads, ffn {args.intermediate}), "
          f"{n_params:,} parameters", flush=True)
    seqs = {split: [tok(line)["input_ids"] + [tok.eos_token_id] for line in lines] for split, lines in text.items()}
    train_loss, train_s = pretrain(model, seqs["train"], args)

    dense = measure(model, tok, seqs["validation"], task, args.block_size)
    compressed = measure(stand_in_compress(model), tok, seqs["validation"], task, args.block_size)
    report = {
        "params": n_params,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "pretrain_seconds": round(train_s, 1),
        "final_train_loss": round(train_loss, 4),
        "dense": dense,
        "stand_in_compressed": compressed,
        "ppl_increase": round(compressed["validation_ppl"] / dense["validation_ppl"] - 1, 4),
    }
    print(json.dumps(report, indent=1), flush=True)

    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        write_build(tmp, model, tok, text, task, report)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"saved to {out} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
