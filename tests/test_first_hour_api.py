"""The first hour with the Python API: file modes of what we write, failing fast on a hub model that cannot
be fetched, and the prompt config checking itself as the recipe path does. No network: the hub is made
unreachable (a refused port, a server that never answers) and the HF cache is a temp dir."""

import os
import shutil
import socket
import stat
import time
from pathlib import Path

import pytest
import torch

from softprompt.errors import ConfigError, SoftPromptError
from softprompt.layers.plain import PromptConfig
from softprompt.model import SoftPromptModel

BOUND_S = 10.0  # generous: the point is "not ~30 s of retries"
REFUSED = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


# ---------------------------------------------------------------------------------------------------
# File modes


@pytest.fixture
def umask():
    def set_mask(mask):
        old.append(os.umask(mask))

    old = []
    yield set_mask
    if old:
        os.umask(old[0])


def modes(root: Path, file_mode: int, dir_mode: int) -> dict[str, tuple[str, str]]:
    """Each path under `root` (and root itself) whose mode is not the expected one: name -> (found, expected)."""
    wrong = {}
    for path in (root, *root.rglob("*")):
        found, expected = stat.S_IMODE(path.stat().st_mode), dir_mode if path.is_dir() else file_mode
        if found != expected:
            wrong[str(path.relative_to(root))] = (oct(found), oct(expected))
    return wrong


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)],
                         ids=["umask-022", "umask-027"])
def test_adapter_and_checkpoint_files_get_the_usual_modes(saved_model, tmp_path, umask, mask, file_mode, dir_mode):
    """safetensors' save_file writes a 0600 temp file and renames it; every file we write is 0666 less the umask."""
    from softprompt.checkpoint import save_checkpoint
    from softprompt.heads import LinearHead

    umask(mask)
    model = SoftPromptModel.from_pretrained(saved_model("llama"), num_virtual_tokens=4)
    model.head = LinearHead(model.prompt.dim, 3, "mean")  # a head: softprompt_extra.safetensors is written too
    adapter = model.save_adapter(tmp_path / "adapter")
    assert {p.name for p in adapter.rglob("*.safetensors")} == {"adapter_model.safetensors", "soft_prompt.safetensors",
                                                                "softprompt_extra.safetensors"}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    ckpt = save_checkpoint(tmp_path / "run", 5, model, optimizer, scheduler, {"epoch": 0}, {}, keep=2)
    assert {p.name for p in ckpt.iterdir()} == {"trainable.safetensors", "trainer_state.pt", "meta.json"}
    assert modes(adapter, file_mode, dir_mode) == {} and modes(ckpt, file_mode, dir_mode) == {}


# ---------------------------------------------------------------------------------------------------
# A hub id that cannot be fetched fails at once


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty HF cache, offline mode off, the hub at `REFUSED`; returns the cache dir."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "ENDPOINT", REFUSED)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read at import: conftest's HF_HUB_OFFLINE=1
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    return cache


def fails_fast(name: str, match: str) -> str:
    start = time.monotonic()
    with pytest.raises(SoftPromptError, match=match) as info:
        SoftPromptModel.from_pretrained(name)
    assert time.monotonic() - start < BOUND_S
    return str(info.value)


@pytest.mark.parametrize("var, value", [("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "yes")])
def test_offline_mode_and_a_model_not_in_the_cache_fails_at_once(hub, monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    message = fails_fast("softprompt-tests/not-cached", "not in the local Hugging Face cache and offline mode is on")
    assert f"({var}={value})" in message and "'softprompt-tests/not-cached'" in message
    assert "local model directory" in message


def test_offline_mode_set_before_import_counts(hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # huggingface_hub refuses every request then
    message = fails_fast("gpt2", "offline mode is on")
    assert "HF_HUB_OFFLINE, set when huggingface_hub was imported" in message and "unset HF_HUB_OFFLINE" in message


def test_an_unreachable_hub_fails_at_once(hub):
    message = fails_fast("gpt2", "is unreachable")
    assert "'gpt2'" in message and REFUSED in message and "not in the local Hugging Face cache" in message
    assert "local model directory" in message and "HF_HUB_OFFLINE=1" in message


def test_a_hub_that_never_answers_times_out(hub, monkeypatch):
    """A server that accepts the connection and never replies: the HEAD gives up after HUB_TIMEOUT_S."""
    from huggingface_hub import constants

    from softprompt import loading_checks

    monkeypatch.setattr(loading_checks, "HUB_TIMEOUT_S", 1.0)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()  # the kernel completes the handshake; nobody ever reads or answers
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        start = time.monotonic()
        message = fails_fast("gpt2", "is unreachable")
        assert time.monotonic() - start >= 0.9 and "timed out" in message  # the probe itself, not offline mode


def cache_entry(cache: Path, repo_id: str) -> Path:
    """The HF cache's layout for `repo_id` at main (refs/main -> snapshots/<sha>/); returns the snapshot dir."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    return repo / "snapshots" / sha


def no_network(*args, **kwargs):
    raise AssertionError("the hub was asked although the model is local or cached")


def test_a_cached_hub_model_loads_without_the_hub(hub, saved_model, monkeypatch):
    """Loaded from its snapshot dir as a local dir: the hub is never asked (transformers, given the hub id with
    local_files_only, still looks up adapter_config.json on the hub, with ~25 s of retries)."""
    from softprompt import loading_checks

    shutil.copytree(saved_model("llama"), cache_entry(hub, "softprompt-tests/tiny"))
    monkeypatch.setattr(loading_checks, "hub_unreachable", no_network)
    start = time.monotonic()
    model = SoftPromptModel.from_pretrained("softprompt-tests/tiny", num_virtual_tokens=3)
    assert time.monotonic() - start < BOUND_S
    assert model.kind == "causal" and model.prompt.num_virtual_tokens == 3
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline mode: a cached model loads all the same
    assert SoftPromptModel.from_pretrained("softprompt-tests/tiny", num_virtual_tokens=3).kind == "causal"


def test_a_model_only_partly_cached_needs_the_hub(hub):
    """A download cut short leaves config.json without weights: that is not a model to load offline."""
    snapshot = cache_entry(hub, "softprompt-tests/partial")
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"model_type": "llama"}')
    message = fails_fast("softprompt-tests/partial", "is unreachable")
    assert "only partly in the local Hugging Face cache" in message


def test_a_local_dir_loads_with_the_hub_unreachable(hub, saved_model, monkeypatch):
    from softprompt import loading_checks

    monkeypatch.setattr(loading_checks, "hub_unreachable", no_network)
    model = SoftPromptModel.from_pretrained(saved_model("llama"), num_virtual_tokens=3)
    assert model.prompt.num_virtual_tokens == 3
    assert SoftPromptModel.from_pretrained("demo", num_virtual_tokens=2).prompt.num_virtual_tokens == 2


# ---------------------------------------------------------------------------------------------------
# The prompt config checks itself, as the recipe path does


def test_from_pretrained_refuses_text_init_without_text(saved_model):
    with pytest.raises(ConfigError, match="prompt.init_text: required when prompt.init is 'text'"):
        SoftPromptModel.from_pretrained(saved_model("llama"), init="text")


BAD = [
    ("init", "bogus", "prompt.init: 'bogus' is not valid; choose one of"),
    ("kernel", "cuda", "prompt.kernel: 'cuda' is not valid; choose one of"),
    ("execution", "fast", "prompt.execution: 'fast' is not valid; choose one of"),
    ("num_virtual_tokens", 0, "prompt.num_virtual_tokens: must be > 0, got 0"),
    ("num_virtual_tokens", -3, "prompt.num_virtual_tokens: must be > 0, got -3"),
    ("init_range", 0.0, "prompt.init_range: must be > 0, got 0.0"),
    ("init_range", float("nan"), "prompt.init_range: must be a finite number, got nan"),
    ("vocab_top_k", 0, "prompt.vocab_top_k: must be > 0, got 0"),
]


@pytest.mark.parametrize("key, value, message", BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_prompt_config_refuses_what_the_recipe_refuses_with_the_same_message(key, value, message):
    from softprompt.config import load_config
    from softprompt.layers.bank import BankConfig
    from softprompt.layers.dept import DeptConfig

    for cls in (PromptConfig, DeptConfig, BankConfig):  # the other prompt sources extend it
        with pytest.raises(ConfigError) as direct:
            cls(**{key: value})
        assert str(direct.value).startswith(message)
    with pytest.raises(ConfigError) as recipe:
        load_config(overrides=[f"prompt.{key}={'.nan' if value != value else value}"])
    assert str(recipe.value) == str(direct.value)


def test_prompt_config_refuses_a_wrong_type():
    with pytest.raises(ConfigError, match="prompt.num_virtual_tokens: expected int, got '5'"):
        PromptConfig(num_virtual_tokens="5")
    with pytest.raises(ConfigError, match="prompt.vocab_top_k: expected int, got True"):
        PromptConfig(vocab_top_k=True)
    assert PromptConfig(init_range=1).init_range == 1  # an int is a fine float
