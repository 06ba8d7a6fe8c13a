"""The component architecture (issue 10): a per-row prompt bank, the body-only path and a trained head,
the polymorphic config sections, adapters that record their components and base, and the import graph."""

import ast
import dataclasses
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import build_model
from helpers import overrides, write_task
from softprompt import registry
from softprompt.config import load_config, to_dict
from softprompt.errors import ConfigError, SoftPromptError
from softprompt.layers import PromptBank, PromptEmbedding
from softprompt.loading import ModelConfig, load_base
from softprompt.model import SoftPromptModel
from softprompt.registry import Component

VOCAB = 400
P = 3


def bank_model(family: str = "llama", execution: str = "concat", k: int = 2, seed: int = 0):
    base = build_model(family, VOCAB, seed=seed)
    prompts = torch.randn(k, P, base.config.hidden_size, generator=torch.Generator().manual_seed(7)) * 0.5
    return SoftPromptModel(base, PromptBank(prompts), kind="causal", execution=execution)


def rows(seed: int = 1):
    """Four rows of different lengths, right-padded, and the bank entry each row takes."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (4, 6), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]])
    return ids * mask, mask, torch.tensor([0, 1, 1, 0])


def alone(model: SoftPromptModel, k: int) -> SoftPromptModel:
    """The same base with bank entry k as a plain prompt (concatenation: the reference path)."""
    prompt = PromptEmbedding(model.prompt.prompt_table(torch.float32)[k].detach())
    return SoftPromptModel(model.base, prompt, kind="causal", execution="concat")


# ---------------------------------------------------------------------------------------------------
# A per-row bank: a mixed batch equals each row run alone with its own prompt


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_bank_mixed_batch_equals_each_row_alone(family):
    model = bank_model(family).eval()
    ids, mask, index = rows()
    with torch.no_grad():
        mixed = model(ids, mask, prompt_index=index).logits  # (B, L, V)
        for b in range(ids.shape[0]):
            n = int(mask[b].sum())
            single = alone(model, int(index[b]))(ids[b:b + 1, :n], mask[b:b + 1, :n]).logits  # (1, n, V)
            torch.testing.assert_close(mixed[b, :n], single[0], rtol=1e-5, atol=1e-5)
    # the two prompts differ, so a row given the other prompt comes out different
    with torch.no_grad():
        swapped = model(ids, mask, prompt_index=1 - index).logits
    assert not torch.allclose(swapped[0, :6], mixed[0, :6], atol=1e-3)


def test_bank_shared_prefix_runs_each_prompt_once_and_equals_concat():
    concat = bank_model(execution="concat")
    shared = bank_model(execution="shared_prefix")
    assert shared.execution_mode() == "shared_prefix"
    ids, mask, index = rows()
    calls = []
    hook = shared.base.base_model.register_forward_hook(
        lambda m, args, kwargs, out: calls.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True)
    labels = ids.masked_fill(mask == 0, -100)
    out_s = shared(ids, mask, labels=labels, prompt_index=index, right_padded=True)
    hook.remove()
    # grouped: the K = 2 prompts run once as a batch of 2 (p columns), then the B = 4 rows run their L tokens
    assert calls == [(2, P), (4, 6)]
    out_c = concat(ids, mask, labels=labels, prompt_index=index, right_padded=True)
    torch.testing.assert_close(out_s.logits, out_c.logits, rtol=1e-5, atol=1e-5)
    out_s.loss.backward()
    out_c.loss.backward()
    grad_s, grad_c = shared.prompt.prompts.grad, concat.prompt.prompts.grad
    torch.testing.assert_close(grad_s, grad_c, rtol=1e-4, atol=1e-6)
    assert grad_s[0].abs().sum() > 0 and grad_s[1].abs().sum() > 0  # each entry learns from its own rows


def test_a_source_that_mixes_prompts_per_row_falls_back_to_concat():
    """The execution choice asks the source: one whose rows' prompts are not rows of its table (a soft
    mixture) cannot share a cache, so auto concatenates and a forced shared prefix is refused."""

    class Mixing(PromptBank):
        prompts_from_table = False

    base = build_model("llama", VOCAB)
    prompts = torch.randn(2, P, base.config.hidden_size)
    assert SoftPromptModel(base, Mixing(prompts), kind="causal").execution_mode() == "concat"
    assert SoftPromptModel(base, PromptBank(prompts), kind="causal").execution_mode() == "shared_prefix"
    with pytest.raises(SoftPromptError, match="builds each row's prompt anew"):
        SoftPromptModel(base, Mixing(prompts), kind="causal", execution="shared_prefix")


def test_bank_generate_per_row_prompts(tokenizer):
    model = bank_model(execution="shared_prefix").eval()
    model.tokenizer = tokenizer
    ids, mask, index = rows()
    kwargs = {"max_new_tokens": 4, "pad_token_id": 0, "eos_token_id": None}
    cached = model.generate(ids, mask, prompt_index=index, **kwargs)
    model.execution = "concat"
    concatenated = model.generate(ids, mask, prompt_index=index, **kwargs)
    assert torch.equal(cached, concatenated)
    for b in range(ids.shape[0]):
        n = int(mask[b].sum())
        own = alone(model, int(index[b])).generate(ids[b:b + 1, :n], **kwargs)
        assert torch.equal(cached[b], own[0])


@pytest.mark.parametrize("execution", ["concat", "shared_prefix"])
@pytest.mark.parametrize("bad, message", [([-1, 0, 0, 1], r"-1 is not a prompt"), ([0, 2, 0, 1], r"2 is not a prompt"),
                                          ([0.0, 1.0, 0.0, 1.0], r"integer prompt numbers")])
def test_bank_refuses_an_index_out_of_range_on_both_paths(execution, bad, message):
    model = bank_model(execution=execution)
    ids, mask, _ = rows()
    with pytest.raises(SoftPromptError, match=message):
        model(ids, mask, prompt_index=torch.tensor(bad))


def test_bank_needs_an_index_and_a_plain_prompt_refuses_one():
    model = bank_model()
    ids, mask, index = rows()
    with pytest.raises(SoftPromptError, match="prompt_index"):
        model(ids, mask)
    with pytest.raises(SoftPromptError, match="one per row"):
        model(ids, mask, prompt_index=index[:3])
    with pytest.raises(SoftPromptError, match="pass no prompt_index"):
        alone(model, 0)(ids, mask, prompt_index=index)


# ---------------------------------------------------------------------------------------------------
# The body-only path and a head


@pytest.mark.parametrize("execution", ["shared_prefix", "concat"])
def test_hidden_states_match_the_full_model_and_skip_the_lm_head(execution):
    base = build_model("llama", VOCAB)
    prompt = PromptEmbedding(torch.randn(P, base.config.hidden_size, generator=torch.Generator().manual_seed(3)))
    model = SoftPromptModel(base, prompt, kind="causal", execution=execution).eval()
    ids, mask, _ = rows()
    lm_head_calls = []
    hook = base.get_output_embeddings().register_forward_hook(lambda *a: lm_head_calls.append(1))
    with torch.no_grad():
        body = model.hidden_states(ids, mask).hidden_states  # (B, L, D)
    assert lm_head_calls == []
    with torch.no_grad():
        full = model(ids, mask, output_hidden_states=True).hidden_states  # through the LM head path
    hook.remove()
    real = mask.bool()
    torch.testing.assert_close(body[real], full[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family, kind", [("t5", "seq2seq"), ("bert", "encoder")])
def test_hidden_states_of_seq2seq_and_encoders_are_aligned(family, kind):
    base = build_model(family, VOCAB)
    prompt = PromptEmbedding(torch.randn(P, base.get_input_embeddings().weight.shape[1]))
    model = SoftPromptModel(base, prompt, kind=kind).eval()
    ids, mask, _ = rows()
    with torch.no_grad():
        right = model.hidden_states(ids, mask).hidden_states
        order = torch.argsort(mask, dim=1, stable=True)  # the same rows, left-padded
        left = model.hidden_states(ids.gather(1, order), mask.gather(1, order)).hidden_states
    assert right.shape == (4, 6, base.get_input_embeddings().weight.shape[1])
    real = mask.bool()
    torch.testing.assert_close(right[real], left[mask.gather(1, order).bool()], rtol=1e-4, atol=1e-5)


@dataclass(frozen=True)
class ParityConfig:
    type: str = "colour_parity"


class ColourParity:
    """A tiny classification-style objective for the test: is the target colour red or blue? One logit per
    row from the head (BCE), weighted by rows. The real classification objective comes with PTEC."""

    uses_head = True

    def __init__(self, cfg):
        self.cfg = cfg

    def check_model(self, kind, has_head, name):
        if not has_head:
            raise SoftPromptError("colour_parity needs a head")

    def encode(self, rows, tokenizer, data_cfg, kind, split):
        return [{"input_ids": tokenizer(r["source"])["input_ids"], "y": float(r["target"].strip() in ("red", "blue"))}
                for r in rows]

    def collate(self, items, pad_id, kind):
        width = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), width), pad_id)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for b, it in enumerate(items):
            ids[b, :len(it["input_ids"])] = torch.tensor(it["input_ids"])
            mask[b, :len(it["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask, "y": torch.tensor([it["y"] for it in items])}

    def weight(self, batch, kind):
        return torch.tensor(batch["y"].shape[0])

    def loss(self, model, batch):
        scores = model(batch["input_ids"], batch["attention_mask"], right_padded=True, output="scores").scores
        return F.binary_cross_entropy_with_logits(scores[:, 0], batch["y"], reduction="sum")

    def metric_names(self):
        return ["eval_bce"]

    def greater_is_better(self, metric):
        return False

    @torch.no_grad()
    def evaluate(self, model, items, batch_size):
        batch = {k: v.to(model.device) for k, v in self.collate(items, model.tokenizer.pad_token_id, model.kind).items()}
        return {"eval_bce": (self.loss(model, batch) / len(items)).item()}


def test_a_linear_head_trains_through_the_loop_and_the_lm_head_never_runs(saved_model, tmp_path, monkeypatch):
    from softprompt import train

    monkeypatch.setitem(registry.OBJECTIVES, "colour_parity", Component(ParityConfig, ColourParity))
    task = write_task(tmp_path / "data")
    items = overrides(saved_model("llama"), task, tmp_path / "out", **{
        "objective.type": "colour_parity", "head.num_outputs": 1, "head.pooling": "last",
        "head.lr": 0.05, "train.metric": "eval_bce", "train.max_steps": 12, "train.eval_every": 6})
    cfg = load_config(None, [i for i in items if not i.startswith("objective.max_new_tokens")])  # an lm key
    assert cfg.head.type == "linear" and cfg.method.name is None
    lm_head_calls = []
    original = load_base

    def load_and_watch(spec):
        base, tok, kind = original(spec)
        base.get_output_embeddings().register_forward_hook(lambda *a: lm_head_calls.append(1))
        return base, tok, kind

    monkeypatch.setattr(sys.modules["softprompt.train"], "load_base", load_and_watch)
    result = train(cfg)
    assert lm_head_calls == []  # training, evaluation: the classifier never computed (B, L, V) logits
    assert result.history[0]["eval_bce"] > result.best["eval_bce"]  # it learned
    assert {n.split(".")[0] for n, p in result.model.named_parameters() if p.requires_grad} == {"prompt", "head"}
    # the adapter carries the head: reloading gives the same scores
    reloaded = SoftPromptModel.from_adapter(result.adapter_dir)
    ids, mask = torch.tensor([[5, 6, 7, 8]]), torch.ones(1, 4, dtype=torch.long)
    torch.testing.assert_close(reloaded.head_outputs(ids, mask).scores, result.model.head_outputs(ids, mask).scores)


def test_pooling_takes_the_last_real_token_whatever_the_padding_side():
    from softprompt.heads import pool

    hidden = torch.arange(2 * 4 * 1, dtype=torch.float).view(2, 4, 1)  # (B, L, D): the value is the position
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "last").flatten().tolist() == [1.0, 7.0]
    assert pool(hidden, left, "last").flatten().tolist() == [3.0, 7.0]
    assert pool(hidden, left, "first").flatten().tolist() == [2.0, 4.0]
    assert pool(hidden, right, "mean").flatten().tolist() == [0.5, 5.5]


@pytest.mark.parametrize("family, expected", [("llama", "last"), ("bert", "mean"), ("t5", "mean")])
def test_auto_pooling_is_last_for_decoders_and_mean_for_encoders(family, expected, tokenizer):
    from conftest import build_model as tiny

    from softprompt.build import build_model

    cfg = load_config(None, ["method=ptec", "objective.labels=[a, b]", "head.num_outputs=2", "prompt.num_virtual_tokens=2"])
    assert cfg.head.pooling == "auto"
    base = tiny(family, len(tokenizer))
    model = build_model(cfg, base, tokenizer, "causal" if family == "llama" else "encoder" if family == "bert" else "seq2seq")
    assert model.head.describe()["pooling"] == expected  # the adapter records the concrete pooling
    ids, mask = torch.tensor([[5, 6, 7, 0]]), torch.tensor([[1, 1, 1, 0]])
    hidden = model.hidden_states(ids, mask).hidden_states  # (1, 4, D)
    from softprompt.heads import pool

    torch.testing.assert_close(model.head_outputs(ids, mask).scores, model.head.proj(pool(hidden, mask, expected)))


# ---------------------------------------------------------------------------------------------------
# Config: prompt and objective sections, presets, and keys that moved


def test_sections_and_presets():
    cfg = load_config(None, ["method=dept", "prompt.rank=4", "prompt.max_length=256"])
    assert cfg.prompt.type == "dept" and cfg.prompt.rank == 4 and cfg.objective.type == "lm"
    assert load_config(None, ["method=null", "prompt.type=dept"]).method.name == "dept"  # the preset it amounts to
    assert load_config(None, ["method.name=dept"]).prompt.type == "dept"
    assert to_dict(load_config(None, ["method=dept"]))["method"] == {"name": "dept"}
    from softprompt.config import from_dict
    for items in (["method=dept"], ["prompt.type=dept", "objective.generate_eval=false"], []):
        cfg = load_config(None, items)
        assert from_dict(to_dict(cfg)) == cfg  # what config.yaml holds reads back the same
    # a bank needs each row's prompt number, which no objective supplies yet: refused before anything loads
    with pytest.raises(ConfigError, match="prompt.type: bank needs each row's prompt number"):
        load_config(None, ["prompt.type=bank", "prompt.num_prompts=3"])


@pytest.mark.parametrize("items, message", [
    (["method=dept", "prompt.type=plain"], r"prompt.type: 'plain' conflicts with method 'dept'"),
    (["prompt.type=nope"], r"prompt.type: unknown prompt 'nope'; choose one of \['bank', 'dept', 'plain'\]"),
    (["objective.type=nope"], r"objective.type: unknown objective 'nope'"),
    (["head.type=nope"], r"head.type: unknown head 'nope'"),
    (["prompt.rank=4"], r"prompt: unknown key\(s\) \['rank'\]"),  # a plain prompt has no rank
    (["method=null", "prompt.type=bank", "prompt.num_prompts=0"], r"prompt.num_prompts: must be >= 1"),
    (["head.pooling=max"], r"head.pooling: 'max' is not valid"),
    (["method.rank=4", "method.name=dept", "prompt.rank=5"], r"method.rank: moved to prompt.rank, which is also set"),
    (["method.name=dept", "method.foo=1"], r"method: unknown key\(s\) \['foo'\]"),
    (["objective.max_new_tokens=0"], r"objective.max_new_tokens: must be > 0"),
    (["method=prompt_tuning", "head.pooling=mean"], r"head: method 'prompt_tuning' has no head"),
    (["prompt.type=bank", "prompt.init=text", "prompt.init_text=hi"], r"a bank needs 4 distinct"),
])
def test_section_errors(items, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, items)


def test_moved_keys_still_work_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="softprompt.config"):
        cfg = load_config(None, ["method.name=dept", "method.rank=4", "train.generate_eval=false"])
    assert cfg.prompt.rank == 4 and cfg.objective.generate_eval is False
    assert sorted(r.getMessage().split()[1] for r in caplog.records) == ["method.rank", "train.generate_eval"]


def test_every_component_is_registered_with_a_frozen_config():
    for table in (registry.PROMPTS, registry.OBJECTIVES, registry.HEADS):
        for name, entry in table.items():
            cfg = entry.config_class()  # every key has a default (label names: from the data)
            assert cfg.type == name
            with pytest.raises(dataclasses.FrozenInstanceError):
                cfg.type = "x"
    for name, preset in registry.METHODS.items():
        assert preset.prompt in registry.PROMPTS and preset.objective in registry.OBJECTIVES


# ---------------------------------------------------------------------------------------------------
# Adapters record their components and the base's loading


def test_bank_and_head_round_trip_through_an_adapter(tmp_path):
    from softprompt.heads import LinearHead

    model = bank_model()
    model.head = LinearHead(model.prompt.dim, 3, "mean", generator=torch.Generator().manual_seed(0))
    out = model.save_adapter(tmp_path / "a")
    assert not (out / "adapter_config.json").exists()  # PEFT has no form for a bank: no half-true PEFT files
    assert (out / "serving" / "prompt_bank.safetensors").is_file()
    back = SoftPromptModel.from_adapter(out, base=model.base)
    assert isinstance(back.prompt, PromptBank) and torch.equal(back.prompt.prompts, model.prompt.prompts)
    ids, mask, index = rows()
    torch.testing.assert_close(back.head_outputs(ids, mask, prompt_index=index).scores,
                               model.head_outputs(ids, mask, prompt_index=index).scores)


def test_adapter_records_how_the_base_was_loaded(saved_model, tmp_path):
    spec = ModelConfig(name_or_path=saved_model("llama"), dtype="bfloat16")
    base, tokenizer, kind = load_base(spec)
    prompt = PromptEmbedding(torch.randn(P, base.config.hidden_size))
    out = SoftPromptModel(base, prompt, tokenizer, kind, spec).save_adapter(tmp_path / "a")
    back = SoftPromptModel.from_adapter(out)  # loads the base again as recorded
    assert back.base.dtype == torch.bfloat16 and back.base_config == dataclasses.replace(spec, kind="causal")


def test_format_1_adapters_still_load(tmp_path, tokenizer):
    """An adapter written before components had their own descriptions (sidecar format 1, DePT's A and B
    under their own names) loads into the same model."""
    import json

    from safetensors.torch import save_file

    from softprompt.layers import DeptOffset

    base = build_model("llama", VOCAB)
    offset = DeptOffset(8, 2, base.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        offset.B.normal_()
    model = SoftPromptModel(base, PromptEmbedding(torch.randn(P, base.config.hidden_size), offset=offset), tokenizer)
    out = model.save_adapter(tmp_path / "a")
    meta = json.loads((out / "softprompt.json").read_text())
    old = {k: v for k, v in meta.items() if k not in ("format", "prompt", "peft_tensor", "head", "base_loading")}
    old["offset"] = meta["prompt"]["offset"]
    (out / "softprompt.json").write_text(json.dumps({"format": 1, **old}))
    from safetensors.torch import load_file

    extra = load_file(str(out / "softprompt_extra.safetensors"))
    save_file({k.removeprefix("prompt.offset."): v for k, v in extra.items()}, str(out / "softprompt_extra.safetensors"))
    back = SoftPromptModel.from_adapter(out, base=base)
    ids, mask, _ = rows()
    torch.testing.assert_close(back(ids, mask).logits, model(ids, mask).logits)


# ---------------------------------------------------------------------------------------------------
# No import cycles, function-local imports included


def _imports(package: Path) -> dict[str, set[str]]:
    modules = {".".join(p.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in package.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                # a module's own package __init__ runs first anyway; an edge to it is not a dependency
                if target in modules and target != name and not name.startswith(target + ".") and target != "softprompt":
                    edges.add(target)
        graph[name] = edges
    return graph


def test_no_import_cycles():
    graph = _imports(Path(__file__).resolve().parents[1] / "softprompt")
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert len(graph) > 20 and "softprompt.model" in graph["softprompt.build"]
    assert cycles == [], " ; ".join(" -> ".join(c) for c in cycles)


def test_the_loop_and_the_wrapper_name_no_method():
    """No `if method == ...` outside the registry: the loop, the wrapper, the builder and the adapter code
    never mention a method, a prompt type beyond the plain one (what a PEFT adapter holds) or an objective."""
    root = Path(__file__).resolve().parents[1] / "softprompt"
    for file in ("train.py", "model.py", "build.py", "adapter.py", "export.py"):
        text = (root / file).read_text()
        for name in ('"prompt_tuning"', '"dept"', "'dept'", '"bank"', '"lm"'):
            assert name not in text, f"{file} names {name}"


def test_lm_objective_normaliser_is_the_count_the_loss_scores():
    """The causal label shift lives in one place: the weight the loop sums equals the tokens the loss scored."""
    from softprompt.objectives.lm import LMConfig, TextToText

    objective = TextToText(LMConfig())
    base = build_model("llama", VOCAB)
    model = SoftPromptModel(base, PromptEmbedding(torch.randn(P, base.config.hidden_size)), kind="causal")
    ids, mask, _ = rows()
    labels = ids.masked_fill(mask == 0, -100)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    out = model(**batch, right_padded=True)
    assert int(objective.weight(batch, "causal")) == int(out.num_tokens) == int(mask.sum()) - 4  # first tokens unscored
    assert math.isclose(objective.loss(model, batch).item(), out.loss_sum.item())


@pytest.mark.parametrize("execution", ["shared_prefix", "concat"])
def test_causal_token_loss_is_the_same_for_either_padding_side(execution):
    """Labels on every real token (HF's convention): a left-padded row's pads must not score its first
    token, so both padding sides give the loss and the count of the unpadded rows."""
    base = build_model("llama", VOCAB)
    model = SoftPromptModel(base, PromptEmbedding(torch.randn(P, base.config.hidden_size)), kind="causal",
                            execution=execution)
    ids, mask, _ = rows()
    order = torch.argsort(mask, dim=1, stable=True)  # left padding: pads first
    left_ids, left_mask = ids.gather(1, order), mask.gather(1, order)
    with torch.no_grad():
        right = model(ids, mask, labels=ids.masked_fill(mask == 0, -100))
        left = model(left_ids, left_mask, labels=left_ids.masked_fill(left_mask == 0, -100))
        alone_sum = sum(model(ids[b:b + 1, :int(mask[b].sum())], labels=ids[b:b + 1, :int(mask[b].sum())]).loss_sum
                        for b in range(ids.shape[0]))
    assert int(left.num_tokens) == int(right.num_tokens) == int(mask.sum()) - ids.shape[0]
    torch.testing.assert_close(left.loss_sum, right.loss_sum, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(right.loss_sum, alone_sum, rtol=1e-5, atol=1e-5)


def test_a_checkpoint_recorded_before_keys_moved_resumes(tmp_path):
    """A run recorded with method.rank and train.generate_eval (before they moved to prompt.* and
    objective.*) resumes under the same recipe written either way; a real change is still refused."""
    from softprompt.train import check_resumable

    cfg = load_config(None, ["method=dept", "prompt.rank=4", "prompt.max_length=256"])
    old = to_dict(cfg)
    old["method"] = {"name": "dept", **{k: old["prompt"].pop(k) for k in ("rank", "max_length", "alpha", "offset_lr",
                                                                        "offset_weight_decay", "fixed_length", "overflow")}}
    del old["prompt"]["type"]
    old["train"].update({k: old["objective"].pop(k) for k in ("generate_eval", "max_new_tokens")})
    del old["objective"], old["head"]
    for key in ("quantization", "device_map"):  # added to model since
        del old["model"][key]
    check_resumable(old, cfg, tmp_path)  # nothing changed
    with pytest.raises(SoftPromptError, match=r"prompt.rank \(4 -> 5\)"):
        check_resumable(old, load_config(None, ["method=dept", "prompt.rank=5", "prompt.max_length=256"]), tmp_path)
