"""A run directory (`<output_dir>/<run_name>/`): what a new run may replace, which checkpoint a resume
continues, and the config.yaml that says what ran. Nothing here trains; train.py asks before it writes."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from softprompt.checkpoint import PREFIX, latest_checkpoint, list_checkpoints
from softprompt.config import Config, to_dict
from softprompt.errors import SoftPromptError


def held_run(run_dir: Path) -> list[str]:
    """What in `run_dir` belongs to a run that a new one would replace (empty: nothing to lose)."""
    ckpts = [p.name + "/" for p in list_checkpoints(run_dir)]
    return ckpts + [name for name in ("final/", "metrics.jsonl") if (run_dir / name.rstrip("/")).exists()]


def check_new_run(run_dir: Path, overwrite: bool) -> None:
    """A fresh run must not silently replace a run that is already there: that takes --overwrite."""
    held = held_run(run_dir)
    if held and not overwrite:
        raise SoftPromptError(f"{run_dir} already holds a run ({', '.join(held)}); continue it with --resume or "
                              "replace it with --overwrite (in train(): resume=True, overwrite=True), or choose "
                              "another train.run_name")


def checkpoint_to_resume(run_dir: Path, resume: bool | str | Path, overwrite: bool) -> Path:
    """The checkpoint `resume` names (True: the run dir's latest; a path: see `find_checkpoint`). It must
    belong to this run's dir (train.output_dir/train.run_name), and one earlier than the latest takes
    `overwrite` (the later ones would be dropped)."""
    ckpt = find_checkpoint(run_dir if resume is True else Path(resume), given=resume is not True)
    if ckpt.parent.resolve() != run_dir.resolve():
        raise SoftPromptError(f"--resume {resume}: the checkpoint belongs to run dir {ckpt.parent}, but this run's "
                              f"dir is {run_dir}; set train.output_dir and train.run_name to the checkpoint's run, or "
                              "give no recipe to continue it with its own config")
    later = [p.name for p in list_checkpoints(run_dir) if p.name > ckpt.name]
    if later and not overwrite:
        raise SoftPromptError(f"--resume {resume}: {ckpt.name} is not the run's latest checkpoint ({', '.join(later)} "
                              "came later); add --overwrite to continue from it and drop the later ones and final/, "
                              f"or `softprompt export {ckpt} OUT` to keep both")
    return ckpt


def find_checkpoint(where: Path, given: bool = True) -> Path:
    """The checkpoint at `where`: that checkpoint dir (step_NNNNNN/), or the latest one of that run dir.
    None there is an error, not a fresh start (`given`: the user named `where`, which may not exist)."""
    if given and not where.is_dir():
        raise SoftPromptError(f"--resume {where}: no such directory; give a checkpoint (RUN/step_NNNNNN/) or a run dir")
    if where.name.startswith(PREFIX) and where.name[len(PREFIX):].isdigit():
        return where
    ckpt = latest_checkpoint(where)
    if ckpt is None:
        start = ("train without --resume to start it" if not held_run(where) else
                 "train with --overwrite instead of --resume to start over (replacing what it holds)")
        raise SoftPromptError(f"--resume: {where} holds no checkpoint (step_NNNNNN/) to continue from; {start}")
    return ckpt


def drop_later(run_dir: Path, ckpt: Path) -> None:
    """Resuming from an earlier checkpoint: the later checkpoints and final/ belong to the run it replaces
    (left in place, keep_checkpoints would prune the new ones first, and a finished check would read the old
    final/)."""
    later = [p for p in list_checkpoints(run_dir) if p.name > ckpt.name]
    for stale in later + ([run_dir / "final"] if later else []):
        shutil.rmtree(stale, ignore_errors=True)


def start_fresh(run_dir: Path, cfg: Config) -> None:
    """A new run in an existing dir (allowed by overwrite) replaces that run's checkpoints and adapter (not
    other files)."""
    for stale in list_checkpoints(run_dir) + [run_dir / "final"]:
        shutil.rmtree(stale, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    write_config(run_dir, cfg)


def write_config(run_dir: Path, cfg: Config) -> None:
    """config.yaml: the config that ran (rewritten on resume, which may change e.g. train.max_steps)."""
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
