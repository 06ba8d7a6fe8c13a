"""Command line: `softprompt train|demo|eval|generate|export|budget`.

    softprompt demo                                   # the embedded default, offline, ~1-2 min on CPU
    softprompt train recipes/debug/tiny-causal.yaml train.max_steps=20 --resume
    softprompt generate checkpoints/demo/final "fulusheel ="
    softprompt budget --d 768 --s 256 --l 100        # DePT (m, r) pairs at a vanilla prompt's budget
    accelerate launch -m softprompt train RECIPE.yaml

Bad input exits with code 2 and one line saying what is wrong and how to fix it; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from softprompt.errors import SoftPromptError


def _recipe_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def cmd_train(args) -> int:
    from softprompt.config import load_config
    from softprompt.train import train

    recipe, overrides = _recipe_and_overrides(args.items)
    cfg = load_config(recipe, overrides)
    result = train(cfg, resume=args.resume)
    if not _main_process():
        return 0
    summary = {
        "adapter": str(result.adapter_dir), "steps": result.steps, "trainable_parameters": result.trainable_parameters,
        "before": result.before, "best_eval": result.best, "test": result.test,
    }
    print(json.dumps(summary, indent=2))
    return 0


def cmd_demo(args) -> int:
    """Prompt tuning on the bundled model and task: held-out accuracy before and after."""
    from softprompt.config import load_config
    from softprompt.train import train

    # AdamW at 0.1 with a short warmup and linear decay: the demo's 1M-parameter model has small
    # embeddings, and 0.003 reaches only ~55% in 300 steps (softprompt/data/demo/README.md).
    demo = ["train.run_name=demo", "optim.lr=0.1", "optim.scheduler=linear", "optim.warmup_steps=10"]
    cfg = load_config(None, [*demo, *args.overrides])
    print("softprompt demo: tuning a soft prompt on the bundled causal LM (softprompt/data/demo)")
    result = train(cfg, resume=False)
    if not _main_process():
        return 0
    before = result.before.get("test_accuracy", result.before.get("eval_accuracy"))
    after = result.test.get("test_accuracy", result.best.get("eval_accuracy"))
    print(f"\ntrainable parameters: {result.trainable_parameters:,} (the prompt: "
          f"{cfg.prompt.num_virtual_tokens} x {result.trainable_parameters // cfg.prompt.num_virtual_tokens})")
    print(f"held-out accuracy before prompt tuning: {before:.1%}")
    print(f"held-out accuracy after prompt tuning:  {after:.1%}  (test split, {result.steps} steps)")
    print(f"adapter: {result.adapter_dir}  curves: {result.run_dir / 'curves.png'}")
    return 0


def cmd_eval(args) -> int:
    from softprompt.config import load_config
    from softprompt.data import encode_rows, load_split
    from softprompt.export import load_adapter
    from softprompt.methods import build_method

    recipe, overrides = _recipe_and_overrides(args.items)
    cfg = load_config(recipe, overrides)
    model = load_adapter(args.adapter)
    split = args.split or cfg.data.test_split or cfg.data.eval_split
    items = encode_rows(load_split(cfg.data.path, split, cfg.data.name), model.tokenizer, cfg.data, model.kind, split)
    metrics = build_method(cfg).evaluate(model, items, cfg.train.eval_batch_size)
    print(json.dumps({"split": split, **metrics}, indent=2))
    return 0


def cmd_generate(args) -> int:
    from softprompt.export import load_adapter

    model = load_adapter(args.adapter)
    for text, out in zip(args.texts, model.generate(list(args.texts), max_new_tokens=args.max_new_tokens)):
        print(f"{text}{out}" if model.kind == "causal" else out)
    return 0


def cmd_export(args) -> int:
    """Turn a checkpoint (step_NNNNNN/) into an adapter dir."""
    from safetensors.torch import load_file

    from softprompt.checkpoint import load_trainable_state
    from softprompt.config import from_dict
    from softprompt.methods import build_method
    from softprompt.model import load_base

    ckpt = Path(args.checkpoint)
    if not (ckpt / "meta.json").is_file():
        raise SoftPromptError(f"export: {str(ckpt)!r} is not a checkpoint dir (no meta.json); pass a run's step_NNNNNN/")
    cfg = from_dict(json.loads((ckpt / "meta.json").read_text())["config"])
    base, tokenizer, kind = load_base(cfg.model.name_or_path, cfg.model.kind, cfg.model.dtype)
    model = build_method(cfg).build_model(base, tokenizer, kind)
    load_trainable_state(model, load_file(str(ckpt / "trainable.safetensors")))
    print(model.save_adapter(args.out, method=cfg.method.name))
    return 0


def cmd_budget(args) -> int:
    """DePT's (m, r) pairs within a vanilla prompt's parameter budget l*d."""
    from softprompt.methods.dept import format_budget

    print(format_budget(args.d, args.s, args.l, args.step))
    return 0


def _main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="softprompt", description="Soft-prompt tuning for Hugging Face models.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train from a YAML recipe with key.sub=value overrides")
    p.add_argument("items", nargs="*", metavar="RECIPE|key=value")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("demo", help="prompt-tune the bundled model offline and print accuracy before/after")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("eval", help="evaluate an adapter on a recipe's data")
    p.add_argument("adapter")
    p.add_argument("items", nargs="*", metavar="RECIPE|key=value")
    p.add_argument("--split", default=None)
    p.set_defaults(fn=cmd_eval)
    p = sub.add_parser("generate", help="generate with an adapter")
    p.add_argument("adapter")
    p.add_argument("texts", nargs="+")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.set_defaults(fn=cmd_generate)
    p = sub.add_parser("export", help="write an adapter dir (PEFT + serving) from a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.set_defaults(fn=cmd_export)
    p = sub.add_parser("budget", help="DePT: (prompt length m, rank r) pairs within a vanilla prompt's parameter budget")
    p.add_argument("--d", type=int, required=True, help="hidden size of the base model (768 for T5-base)")
    p.add_argument("--s", type=int, required=True, help="DePT offset length, the max input length (256 in the paper)")
    p.add_argument("--l", type=int, required=True, help="vanilla prompt length whose budget l*d is matched (100)")
    p.add_argument("--step", type=int, default=10, help="list every step-th prompt length m (default 10)")
    p.set_defaults(fn=cmd_budget)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _quiet_libraries()
    try:
        return args.fn(args)
    except SoftPromptError as e:
        print(f"softprompt: error: {e}", file=sys.stderr)
        return 2


def _quiet_libraries() -> None:
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


if __name__ == "__main__":
    raise SystemExit(main())
