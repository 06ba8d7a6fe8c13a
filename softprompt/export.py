"""Export and import entry points: adapter dirs from models and checkpoints (the file formats are in
adapter.py)."""

from __future__ import annotations

import logging
from pathlib import Path

from softprompt.adapter import SIDECAR, read_json, read_tensors
from softprompt.errors import SoftPromptError, gist
from softprompt.model import SoftPromptModel

log = logging.getLogger(__name__)


def load_adapter(adapter_dir: str | Path, base=None, tokenizer=None) -> SoftPromptModel:
    """A SoftPromptModel from an adapter dir: ours, a plain PEFT prompt-tuning dir, or the official DePT code's."""
    return SoftPromptModel.from_adapter(adapter_dir, base=base, tokenizer=tokenizer)


def check_new_output(out: str | Path) -> Path:
    """An export target that is safe to create: not '.', not an existing file, not a dir with files in it
    (export would replace it). Checked before anything is loaded or written."""
    path = Path(out)
    fix = "give a new directory path (export creates it)"
    if path.resolve() == Path.cwd().resolve():
        raise SoftPromptError(f"export: {str(out)!r} is the current directory, which export would replace; {fix}")
    if path.is_file() or (path.exists() and not path.is_dir()):
        raise SoftPromptError(f"export: {str(out)!r} is an existing file; {fix}")
    if path.is_dir() and any(path.iterdir()):
        raise SoftPromptError(f"export: {str(out)!r} is not empty, and export would replace what it holds; {fix}, "
                              "or delete it first")
    return path


def final_decision(ckpt: Path, step) -> dict | None:
    """The decision rule (per-label thresholds) of the run's final/ when it holds this checkpoint's step:
    it was fitted for exactly these weights. Any other step has none (said once)."""
    final = ckpt.parent / "final" / SIDECAR
    meta = read_json(final, "re-train the run, or export without it") if final.is_file() else {}
    if not meta.get("decision"):
        return None
    if meta.get("source_step") == step:
        return meta["decision"]
    log.warning("export: %s is not the step final/ holds (step %s), whose per-label thresholds were fitted for its "
                "own weights; the export has no tuned thresholds", ckpt.name, meta.get("source_step"))
    return None


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """A run's checkpoint (step_NNNNNN/) as an adapter dir. Everything is checked before anything is written."""
    from softprompt.build import build_model
    from softprompt.checkpoint import learned_buffers, load_trainable_state
    from softprompt.config import from_dict
    from softprompt.loading import load_base

    out = check_new_output(out)
    ckpt = Path(checkpoint)
    fix = "pass a run's step_NNNNNN/ as softprompt train wrote it"
    if not (ckpt / "meta.json").is_file():
        raise SoftPromptError(f"export: {str(ckpt)!r} is not a checkpoint dir (no meta.json); {fix}")
    meta = read_json(ckpt / "meta.json", fix)
    if not isinstance(meta.get("config"), dict):
        raise SoftPromptError(f"export: {str(ckpt / 'meta.json')!r} holds no 'config' mapping; {fix}")
    cfg = from_dict(meta["config"])
    tensors = read_tensors(ckpt / "trainable.safetensors", fix)
    base, tokenizer, kind = load_base(cfg.model)
    model = build_model(cfg, base, tokenizer, kind)
    params = dict(model.named_parameters()) | learned_buffers(model)
    wrong = sorted(k for k, v in tensors.items() if k not in params or params[k].shape != v.shape)
    if wrong:
        raise SoftPromptError(f"export: {str(ckpt / 'trainable.safetensors')!r} does not fit the model its meta.json "
                              f"describes (tensors {wrong[:3]}); {fix}")
    load_trainable_state(model, tensors)
    step = meta.get("step")  # the sidecar says what ran, as train's final/ does (eval reads its config)
    model.decision = final_decision(ckpt, step)
    return model.save_adapter(out, method=cfg.method.name, steps=step, source_step=step, chosen_by="exported checkpoint",
                              config=meta["config"])


def check_hub_push(repo_id: str) -> None:
    """Refuse a push before anything is written: a repo id the hub would reject, offline mode, or no hub."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from softprompt.loading_checks import hub_unreachable, offline_setting

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise SoftPromptError(f"--push-to-hub: {repo_id!r} is not a hub repo id ({str(e).splitlines()[0]}); give "
                              "NAMESPACE/NAME, e.g. my-org/llama-7b-8x-recovery") from None
    offline = offline_setting()
    if offline is not None:
        raise SoftPromptError(f"--push-to-hub: offline mode is on ({offline[1]}); unset {offline[0]} to push, or export "
                              "without --push-to-hub and upload the dir later")
    reason = hub_unreachable()
    if reason is not None:
        raise SoftPromptError(f"--push-to-hub: the hub is unreachable from this machine ({reason}); export without "
                              "--push-to-hub and upload the dir where the hub is reachable")


def push_to_hub(adapter_dir: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload an adapter dir (model card included) to a hub model repo, creating it if needed; the URL of the
    commit. A thin call of huggingface_hub: its login (HF_TOKEN or `hf auth login`) is the credential, and
    nothing here prints or stores it."""
    from huggingface_hub import HfApi

    check_hub_push(repo_id)
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(adapter_dir), repo_id=repo_id, repo_type="model",
                                   commit_message="softprompt adapter")
    except Exception as e:  # noqa: BLE001 - the hub's HTTP errors (auth, permissions, quota): one line, the fix
        raise SoftPromptError(f"--push-to-hub: the hub refused the upload to {repo_id!r} ({gist(e)}); check the login "
                              f"(HF_TOKEN or `hf auth login`) and its write access; the adapter is at {adapter_dir}") from None
    return str(getattr(commit, "commit_url", commit))
