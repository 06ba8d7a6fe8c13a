#!/usr/bin/env python
"""Build the embedded demo assets of softprompt: a synthetic corpus, a downstream task, a trained
tokenizer and a small pretrained Llama, all under softprompt/data/demo/.

    python scripts/build_demo.py            # ~5 min on 2 CPU cores, fully offline

The world: a lexicon of made-up nouns, each with five attributes (color, kind, home, size, taste;
disjoint value sets). The corpus states every fact with an explicit attribute marker
(`color : blick = red`, also in same-attribute lists `color : blick = red ; dax = blue ; ...`) and
without it (`blick = red`, `blick = fruit`, ... every attribute equally often), plus filler
sentences. So the base model given `<s> blick =` is ambiguous among the five attributes, while
`<s> color : blick =` is not. The downstream task is the color attribute without a marker
(source `blick =`, target ` red`); its nouns are split into train / validation / test, and all
nouns' facts are in the corpus, so held-out accuracy measures whether a soft prompt learned to
*select* the attribute, not memorised answers.

Everything is seeded; the pretraining runs with deterministic algorithms and a fixed number of
threads (--threads, default 2), so a rerun on the same machine / torch build gives the same bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "softprompt" / "data" / "demo"

# Attribute -> values. Value sets are disjoint and every value is a plain lowercase word.
ATTRIBUTES: dict[str, list[str]] = {
    "color": ["red", "blue", "green", "yellow", "black", "white", "purple", "orange"],
    "kind": ["fruit", "tool", "beast", "bird", "fish", "plant", "toy", "gem"],
    "home": ["forest", "river", "desert", "city", "mountain", "ocean", "farm", "cave"],
    "size": ["tiny", "small", "medium", "large", "huge", "giant"],
    "taste": ["sweet", "sour", "bitter", "salty", "spicy", "bland"],
}
TASK_ATTRIBUTE = "color"
SPLITS = {"train": 320, "validation": 100, "test": 150}  # nouns per task split (disjoint)

# Filler sentences (no facts; their words are not attribute values or markers).
SUBJECTS = ["i", "we", "they", "the farmer", "my friend", "the child", "a stranger", "the old man", "she", "he"]
VERBS = ["saw", "found", "lost", "bought", "drew", "named", "kept", "sold", "fed", "met", "painted", "carried"]
TAILS = ["in the morning", "at night", "last week", "by the road", "with care", "near the gate",
         "after lunch", "before dawn", "on the hill", "again", "once", "for a while"]

CONSONANTS = list("bdfgklmnprstvz") + ["br", "cl", "dr", "fl", "gr", "pl", "sk", "sn", "st", "tr", "ch", "sh"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "oo", "ee"]
CODAS = ["", "", "", "n", "k", "t", "x", "m", "p", "sh", "ck", "l"]


def make_nouns(n: int, rng: random.Random) -> list[str]:
    banned = {v for vs in ATTRIBUTES.values() for v in vs} | set(ATTRIBUTES)
    banned |= {w for s in SUBJECTS + VERBS + TAILS for w in s.split()}
    nouns: list[str] = []
    seen: set[str] = set()
    while len(nouns) < n:
        k = rng.choice([1, 2, 2, 2, 3])
        w = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(k)) + rng.choice(CODAS)
        if 3 <= len(w) <= 10 and w not in seen and w not in banned:
            seen.add(w)
            nouns.append(w)
    return nouns


def build_world(seed: int):
    rng = random.Random(seed)
    n = sum(SPLITS.values())
    nouns = make_nouns(n, rng)
    facts = {w: {a: rng.choice(vs) for a, vs in ATTRIBUTES.items()} for w in nouns}
    return nouns, facts


def build_corpus(nouns, facts, seed: int, unmarked_reps: int, marked_reps: int, list_reps: int,
                 n_filler: int) -> list[str]:
    """One segment per line; the pretraining wraps each line as `<s> line </s>`."""
    rng = random.Random(seed + 1)
    lines: list[str] = []
    for w in nouns:
        for a, v in facts[w].items():
            lines += [f"{w} = {v}"] * unmarked_reps  # every attribute equally often: ambiguous
            lines += [f"{a} : {w} = {v}"] * marked_reps
    for a in ATTRIBUTES:  # same-attribute lists: the marker sets the attribute for the whole line
        for _ in range(list_reps):
            order = nouns[:]
            rng.shuffle(order)
            i = 0
            while i < len(order):
                k = rng.randint(2, 6)
                chunk = order[i:i + k]
                i += k
                lines.append(f"{a} : " + " ; ".join(f"{w} = {facts[w][a]}" for w in chunk))
    for _ in range(n_filler):
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} a {rng.choice(nouns)}"
        if rng.random() < 0.5:
            s += f" and a {rng.choice(nouns)}"
        lines.append(f"{s} {rng.choice(TAILS)} .")
    rng.shuffle(lines)
    return lines


def build_task(nouns, facts) -> dict[str, list[dict]]:
    out, i = {}, 0
    for split, n in SPLITS.items():
        out[split] = [{"source": f"{w} =", "target": f" {facts[w][TASK_ATTRIBUTE]}"} for w in nouns[i:i + n]]
        i += n
    return out


def train_tokenizer(lines: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(lines, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   model_max_length=256, padding_side="right", clean_up_tokenization_spaces=False)


def batches(seqs: list[list[int]], batch_size: int, rng: random.Random):
    """Shuffled batches of similar length (sort within windows of 50 batches)."""
    order = list(range(len(seqs)))
    rng.shuffle(order)
    window = batch_size * 50
    out = []
    for s in range(0, len(order), window):
        chunk = sorted(order[s:s + window], key=lambda i: len(seqs[i]))
        out += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(out)
    return out


def pad(rows: list[list[int]], pad_id: int):
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, x in enumerate(rows):
        ids[r, :len(x)] = torch.tensor(x)
        mask[r, :len(x)] = 1
    return ids, mask


def embed_batch(model, prompt, rows: list[list[int]], pad_id: int):
    """[prompt ; tokens] embeddings (no prompt: tokens only), right padded, with mask and position ids."""
    p = 0 if prompt is None else prompt.shape[0]
    ids, mask = pad(rows, pad_id)  # (B, L)
    emb = model.get_input_embeddings()(ids)  # (B, L, D)
    if prompt is not None:
        emb = torch.cat([prompt.unsqueeze(0).expand(len(rows), -1, -1).to(emb.dtype), emb], dim=1)  # (B, p+L, D)
        mask = torch.cat([torch.ones(len(rows), p, dtype=torch.long), mask], dim=1)  # (B, p+L)
    return emb, mask, (mask.cumsum(1) - 1).clamp(min=0)


@torch.no_grad()
def greedy(model, tok, sources: list[str], prompt=None, max_new: int = 4, batch_size: int = 256) -> list[str]:
    """Greedy continuation of each source after an optional soft prompt (full recompute per step: the
    sequences are short), cut at </s>."""
    model.eval()
    eos, p = tok.eos_token_id, 0 if prompt is None else prompt.shape[0]
    outs = []
    for s in range(0, len(sources), batch_size):
        rows = [tok(x)["input_ids"] for x in sources[s:s + batch_size]]
        gen = [[] for _ in rows]
        done = [False] * len(rows)
        for _ in range(max_new):
            cur = [r + g for r, g in zip(rows, gen)]
            emb, mask, pos = embed_batch(model, prompt, cur, tok.pad_token_id)
            logits = model(inputs_embeds=emb, attention_mask=mask, position_ids=pos).logits
            last = torch.tensor([p + len(c) - 1 for c in cur])
            nxt = logits[torch.arange(len(cur)), last].argmax(-1).tolist()
            for r, t in enumerate(nxt):
                if not done[r]:
                    gen[r].append(t)
                    done[r] = t == eos
            if all(done):
                break
        for g in gen:
            outs.append(tok.decode(g[:g.index(eos)] if eos in g else g))
    return outs


def accuracy(model, tok, pairs: list[tuple[str, str]]) -> float:
    preds = greedy(model, tok, [s for s, _ in pairs])
    return sum(p.strip() == t.strip() for p, (_, t) in zip(preds, pairs)) / len(pairs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vocab-size", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--intermediate", type=int, default=384)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--unmarked-reps", type=int, default=2)
    ap.add_argument("--marked-reps", type=int, default=1)
    ap.add_argument("--list-reps", type=int, default=2)
    ap.add_argument("--filler", type=int, default=3000)
    args = ap.parse_args()

    t0 = time.time()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    # 1. world, corpus, task
    nouns, facts = build_world(args.seed)
    lines = build_corpus(nouns, facts, args.seed, args.unmarked_reps, args.marked_reps, args.list_reps, args.filler)
    task = build_task(nouns, facts)
    out: Path = args.out
    for old in ("model", "task"):  # README.md and anything else in `out` are kept
        if (out / old).exists():
            shutil.rmtree(out / old)
    (out / "task").mkdir(parents=True)
    (out / "corpus.txt").write_text("\n".join(lines) + "\n")
    for split, rows in task.items():
        with open(out / "task" / f"{split}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    print(f"corpus: {len(lines)} lines, {len(nouns)} nouns x {len(ATTRIBUTES)} attributes; "
          f"task: {', '.join(f'{k} {len(v)}' for k, v in task.items())}")

    # 2. tokenizer
    tok = train_tokenizer(lines, args.vocab_size)
    print(f"tokenizer: byte-level BPE, {len(tok)} tokens")

    # 3. model
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        initializer_range=0.02,
    )
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: Llama {args.layers}x{args.hidden} (ffn {args.intermediate}), {n_params:,} parameters")

    seqs = [[tok.bos_token_id] + tok(l, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for l in lines]
    n_tokens = sum(map(len, seqs))
    rng = random.Random(args.seed + 2)
    steps_per_epoch = math.ceil(len(seqs) / args.batch_size)
    total = steps_per_epoch * args.epochs
    warmup = min(200, total // 10)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    print(f"pretraining: {n_tokens:,} tokens/epoch, {args.epochs} epochs, {total} steps of {args.batch_size} lines")
    step = 0
    t1 = time.time()
    for epoch in range(args.epochs):
        model.train()
        run = 0.0
        for b in batches(seqs, args.batch_size, rng):
            ids, mask = pad([seqs[i] for i in b], tok.pad_token_id)
            labels = ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            run += loss.item()
            step += 1
        print(f"  epoch {epoch + 1}/{args.epochs}: loss {run / steps_per_epoch:.4f} ({time.time() - t1:.0f}s)", flush=True)
    train_s = time.time() - t1

    # 4. measure, save
    model.eval()
    report = {}
    for split, rows in task.items():
        ws = [r["source"][:-2] for r in rows]
        report[split] = {
            "marker": accuracy(model, tok, [(f"{TASK_ATTRIBUTE} : {w} =", f" {facts[w][TASK_ATTRIBUTE]}") for w in ws]),
            "no_marker": accuracy(model, tok, [(r["source"], r["target"]) for r in rows]),
        }
    every = [(f"{a} : {w} =", f" {facts[w][a]}") for w in nouns for a in ATTRIBUTES]
    report["all_facts_marker"] = accuracy(model, tok, every)
    preds = greedy(model, tok, [f"{w} =" for w in nouns])
    value_attr = {v: a for a, vs in ATTRIBUTES.items() for v in vs}
    picked = {a: 0 for a in ATTRIBUTES}
    correct_some = 0
    for w, p in zip(nouns, preds):
        a = value_attr.get(p.strip())
        if a is not None:
            picked[a] += 1
            correct_some += facts[w][a] == p.strip()
    report["no_marker_attribute_picked"] = {a: round(c / len(nouns), 3) for a, c in picked.items()}
    report["no_marker_answer_is_some_true_fact"] = round(correct_some / len(nouns), 3)
    report["params"] = n_params
    report["pretrain_seconds"] = round(train_s, 1)
    print(json.dumps(report, indent=1))

    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id, do_sample=False, max_new_tokens=8)
    model.save_pretrained(out / "model", safe_serialization=True)
    tok.save_pretrained(out / "model")
    for f in out.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)  # save_pretrained may write 0600 files
    print(f"saved to {out} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
