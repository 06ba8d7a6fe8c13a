"""A small text-to-text dataset written as jsonl files, for training tests."""

import json
from pathlib import Path

WORDS = ["cat", "dog", "sky", "apple", "grass", "banana", "mat", "park", "one", "two", "three", "world"]
COLORS = ["red", "green", "blue", "yellow"]


def write_task(root: Path, n_train: int = 48, n_eval: int = 12) -> Path:
    """source 'w =' -> target ' colour'; lengths vary so padding and token counts differ per row."""
    root.mkdir(parents=True, exist_ok=True)
    rows = [{"source": " ".join(WORDS[: 1 + i % 5]) + f" {WORDS[i % len(WORDS)]} =", "target": " " + COLORS[i % 4]}
            for i in range(n_train + 2 * n_eval)]
    splits = {"train": rows[:n_train], "validation": rows[n_train:n_train + n_eval], "test": rows[n_train + n_eval:]}
    for name, part in splits.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return root


def overrides(model_dir: str, data_dir: Path, out_dir: Path, **extra) -> list[str]:
    base = {
        "model.name_or_path": model_dir, "data.path": str(data_dir), "train.output_dir": str(out_dir),
        "train.run_name": "t", "train.max_steps": 6, "train.batch_size": 4, "train.eval_every": 3,
        "train.save_every": 3, "train.log_every": 1, "train.trackers": "[]", "train.progress_bar": "false",
        "prompt.num_virtual_tokens": 4, "optim.lr": 0.1, "objective.max_new_tokens": 3,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items() if v is not None]  # None: leave the key out
