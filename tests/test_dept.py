"""DePT (methods/dept.py, layers/dept.py) on real tiny models: reduction to prompt tuning, gradients, the
two param groups, parameter parity, alignment under padding, the official fixed-length formula, official
checkpoint import, adapter round trip, training on causal and seq2seq models."""

import argparse
import json
import math

import pytest
import torch

from conftest import build_model
from helpers import overrides, write_task
from softprompt import load_config, train
from softprompt.config import PromptConfig
from softprompt.errors import ConfigError, SoftPromptError
from softprompt.layers import DeptOffset, PromptEmbedding
from softprompt.registry import PROMPTS
from softprompt.build import build_model as build_components
from softprompt.build import build_objective, param_groups
from softprompt.methods.dept import budget_pairs, dept_parameters
from softprompt.layers.inits import initial_prompt
from softprompt.model import SoftPromptModel

TEXTS = ["the cat sat on the mat", "a dog", "red green blue yellow one two"]


def tiny(family, tokenizer, m=4, s=16, r=3, nonzero_b=True, seed=0, **offset_kwargs):
    """(DePT model, plain prompt-tuning model) over one base, sharing the same m-token prompt."""
    base = build_model(family, len(tokenizer), seed=seed)
    prompt = initial_prompt(PromptConfig(num_virtual_tokens=m), base.get_input_embeddings().weight, tokenizer, seed)
    offset = DeptOffset(s, r, 32, generator=torch.Generator().manual_seed(seed), **offset_kwargs)
    if nonzero_b:
        with torch.no_grad():
            offset.B.copy_(0.5 * torch.randn(r, 32, generator=torch.Generator().manual_seed(1)))
    dept = SoftPromptModel(base, PromptEmbedding(prompt, offset=offset), tokenizer)
    plain = SoftPromptModel(base, PromptEmbedding(prompt), tokenizer)
    return dept, plain


def batch(tokenizer, texts, side="right"):
    tokenizer.padding_side = side
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = "right"
    return enc["input_ids"], enc["attention_mask"]


def decoder_ids(n_rows):
    return torch.tensor([[0, 5, 9, 7]] * n_rows)  # (B, 4): any fixed decoder input


def logits(model, ids, mask):
    with torch.no_grad():
        if model.kind == "seq2seq":
            return model(ids, mask, decoder_input_ids=decoder_ids(len(ids))).logits  # (B, T_dec, V)
        return model(ids, mask).logits  # (B, L, V)


# ---------------------------------------------------------------------------------------------------
# The layer


def test_offset_shapes_init_scaling_and_registry():
    off = DeptOffset(256, 30, 768, generator=torch.Generator().manual_seed(0))
    assert off.A.shape == (256, 30) and off.B.shape == (30, 768)
    assert off.scaling == pytest.approx(8 / math.sqrt(30)) and off.scaling == pytest.approx(1.4606, abs=1e-4)
    assert off.A.abs().max() <= 1 / math.sqrt(30) and off.A.std() > 0.5 / math.sqrt(30) / math.sqrt(3)
    assert torch.equal(off.B, torch.zeros(30, 768)) and torch.equal(off.rows(), torch.zeros(256, 768))
    source = PromptEmbedding(torch.zeros(2, 768), offset=off)
    description = source.describe()  # what an adapter records; the registry rebuilds the source from it
    assert description["type"] == "dept"
    restored = PROMPTS[description["type"]].restore(description, source.state_dict())
    assert restored.offset.describe() == off.describe() and torch.equal(restored.offset.A, off.A)
    state = torch.random.get_rng_state()
    DeptOffset(8, 2, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.random.get_rng_state())  # dropout / data order unaffected


def test_index_real_tokens_fixed_length_and_overflow():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    off = DeptOffset(6, 2, 4)
    assert off.index(right).tolist() == [[0, 1, 2, -1], [0, 1, -1, -1]]
    assert off.index(left).tolist() == [[-1, 0, 1, 2], [-1, -1, 0, 1]]
    fixed = DeptOffset(6, 2, 4, fixed_length=True, padding_side="left")  # as if left-padded to s = 6
    assert fixed.index(right).tolist() == [[3, 4, 5, -1], [4, 5, -1, -1]]
    assert fixed.index(left).tolist() == [[-1, 3, 4, 5], [-1, -1, 4, 5]]
    assert DeptOffset(6, 2, 4, fixed_length=True).index(left).tolist() == off.index(left).tolist()
    long = torch.ones(2, 8, dtype=torch.long)
    with pytest.raises(SoftPromptError, match="prompt.overflow=truncate"):
        DeptOffset(6, 2, 4).index(long)
    assert DeptOffset(6, 2, 4, overflow="truncate").index(long)[0].tolist() == [0, 1, 2, 3, 4, 5, -1, -1]
    assert DeptOffset(6, 2, 4).index(long[:, :6])[0].tolist() == [0, 1, 2, 3, 4, 5]  # exactly s fits


# ---------------------------------------------------------------------------------------------------
# Reduction to prompt tuning, alignment, the official formula


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_zero_b_equals_prompt_tuning_exactly(tokenizer, family):
    dept, plain = tiny(family, tokenizer, nonzero_b=False)
    ids, mask = batch(tokenizer, TEXTS)
    assert torch.equal(logits(dept, ids, mask), logits(plain, ids, mask))
    with torch.no_grad():
        dept.prompt.offset.B.fill_(0.1)
    assert not torch.allclose(logits(dept, ids, mask), logits(plain, ids, mask), atol=1e-3)  # the check can fail


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_offset_follows_real_tokens_under_any_padding(tokenizer, family):
    dept, plain = tiny(family, tokenizer)
    short = "a dog"
    alone = logits(dept, *batch(tokenizer, [short]))[0]
    for side in ("right", "left"):
        ids, mask = batch(tokenizer, [TEXTS[0], short], side)
        padded = logits(dept, ids, mask)[1]
        if dept.kind == "causal":
            padded = padded[mask[1].bool()]  # (n, V): the real positions
        torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(alone, logits(plain, *batch(tokenizer, [short]))[0], atol=1e-3)  # B matters


def official_logits(model, tokenizer, texts, s, side, alpha=8.0):
    """The official DePT forward restated independently: pad every row to exactly s on `side`, add
    (alpha / sqrt(r)) * A @ B to all s slots (padding included), prepend P, extend the mask by m ones.
    Causal positions are taken from the mask (our model's rule for every path)."""
    off, prompt = model.prompt.offset, model.prompt.prompt.detach()
    pad = tokenizer.pad_token_id
    rows, masks = [], []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        fill = [pad] * (s - len(ids))
        rows.append(ids + fill if side == "right" else fill + ids)
        real = [1] * len(ids)
        masks.append(real + [0] * len(fill) if side == "right" else [0] * len(fill) + real)
    ids, mask = torch.tensor(rows), torch.tensor(masks)  # (B, s)
    gamma = alpha / math.sqrt(off.A.shape[1])
    x = model.base.get_input_embeddings()(ids) + gamma * (off.A @ off.B)  # (B, s, d) + (s, d)
    z = torch.cat([prompt.expand(len(rows), -1, -1), x], dim=1)  # (B, m+s, d)
    full = torch.cat([torch.ones(len(rows), prompt.shape[0], dtype=torch.long), mask], dim=1)  # (B, m+s)
    with torch.no_grad():
        if model.kind == "seq2seq":
            return model.base(inputs_embeds=z, attention_mask=full, decoder_input_ids=decoder_ids(len(rows))).logits, mask
        positions = (full.cumsum(1) - 1).clamp(min=0)
        return model.base(inputs_embeds=z, attention_mask=full, position_ids=positions).logits[:, prompt.shape[0]:], mask


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_fixed_length_reproduces_the_official_formula(tokenizer, family):
    s = 12
    side = "left" if family == "llama" else "right"  # the official decoder-only / T5 paths
    dept, _ = tiny(family, tokenizer, s=s, fixed_length=True, padding_side=side)
    ids, mask = batch(tokenizer, TEXTS)  # our dynamic right padding, not padded to s
    ours = logits(dept, ids, mask)
    ref, ref_mask = official_logits(dept, tokenizer, TEXTS, s, side)
    if family == "t5":
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
        return
    for row in range(len(TEXTS)):
        torch.testing.assert_close(ours[row][mask[row].bool()], ref[row][ref_mask[row].bool()], atol=1e-5, rtol=1e-4)
    aligned, _ = tiny(family, tokenizer, s=s)  # real-token alignment differs from the official left padding
    short = mask[1].bool()
    assert not torch.allclose(logits(aligned, ids, mask)[1][short], ref[1][ref_mask[1].bool()], atol=1e-3)


# ---------------------------------------------------------------------------------------------------
# Method: config, param groups, gradients, parameter count (through the real loop pieces)


def dept_cfg(model_dir, task, out, **extra):
    values = {"method.name": "dept", "prompt.rank": 3, "prompt.max_length": 24, "prompt.offset_lr": 0.01,
              "data.max_length": 24, "data.max_target_length": 8, **extra}
    return load_config(None, overrides(model_dir, task, out, **values))


def test_param_groups_schedule_and_parameter_count(saved_model, tmp_path):
    from softprompt.loading import load_base
    from softprompt.train import build_optimizer, build_scheduler

    cfg = dept_cfg(saved_model("llama"), tmp_path, tmp_path, **{"optim.lr": 0.3, "optim.weight_decay": 1e-5,
                   "prompt.offset_weight_decay": 0.01, "optim.warmup_steps": 4, "optim.scheduler": "linear"})
    base, tok, kind = load_base(cfg.model)
    model = build_components(cfg, base, tok, kind)
    assert model.trainable_parameters() == dept_parameters(4, 3, 24, 32) == 4 * 32 + 3 * (24 + 32)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"prompt.prompt", "prompt.offset.A", "prompt.offset.B"}
    opt = build_optimizer(cfg, param_groups(cfg, model))
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups] == [(0.3, 1e-5, 1), (0.01, 0.01, 2)]
    assert opt.param_groups[1]["params"][0] is model.prompt.offset.A
    sched = build_scheduler(cfg, opt)
    opt.step()  # no gradients yet: a no-op, keeps the scheduler's call order
    sched.step()
    lrs = sched.get_last_lr()
    assert lrs == pytest.approx([0.3 / 4, 0.01 / 4])  # one warmup schedule scales both groups


def test_gradients_reach_b_first_then_a(saved_model, tmp_path):
    from softprompt.data import load_split
    from softprompt.loading import load_base
    from softprompt.train import build_optimizer

    task = write_task(tmp_path / "data")
    cfg = dept_cfg(saved_model("llama"), task, tmp_path)
    objective = build_objective(cfg)
    base, tok, kind = load_base(cfg.model)
    model = build_components(cfg, base, tok, kind)
    items = objective.encode(load_split(str(task), "train"), tok, cfg.data, kind, "train")
    opt = build_optimizer(cfg, param_groups(cfg, model))
    off = model.prompt.offset
    for step in (1, 2):
        batch = objective.collate(items[:4], tok.pad_token_id, kind)
        loss_sum, count = objective.loss(model, batch), objective.weight(batch, kind)
        (loss_sum / count).backward()
        if step == 1:
            assert torch.equal(off.A.grad, torch.zeros_like(off.A))  # dL/dA = gamma * G @ B^T, B = 0
        else:
            assert off.A.grad.abs().sum() > 0
        assert off.B.grad.abs().sum() > 0 and model.prompt.prompt.grad.abs().sum() > 0
        opt.step()
        opt.zero_grad()


def test_config_errors(saved_model, tmp_path):
    with pytest.raises(ConfigError, match="prompt.rank"):
        dept_cfg(saved_model("llama"), tmp_path, tmp_path, **{"prompt.rank": 0})
    with pytest.raises(ConfigError, match="prompt.overflow"):
        dept_cfg(saved_model("llama"), tmp_path, tmp_path, **{"prompt.overflow": "wrap"})
    with pytest.raises(ConfigError, match=r"data.max_length <= 24"):
        build_objective(dept_cfg(saved_model("llama"), tmp_path, tmp_path, **{"data.max_length": 64}))
    build_objective(dept_cfg(saved_model("llama"), tmp_path, tmp_path, **{"data.max_length": 64, "prompt.overflow": "truncate"}))


def test_budget_pairs_and_cli(capsys):
    from softprompt.cli import main

    pairs = budget_pairs(768, 256, 100)
    assert (60, 30, 76_800, True) in pairs and (40, 45, 76_800, True) in pairs and (80, 15, 76_800, True) in pairs
    assert pairs[0] == (100, 0, 76_800, True)  # vanilla
    for p in pairs:
        assert p.params == dept_parameters(p.m, p.r, 256, 768) <= 76_800 < dept_parameters(p.m, p.r + 1, 256, 768)
    assert main(["budget", "--d", "768", "--s", "256", "--l", "100"]) == 0
    out = capsys.readouterr().out
    assert "76,800" in out and any(line.split()[:2] == ["60", "30"] and "exact" in line for line in out.splitlines())
    assert main(["budget", "--d", "768", "--s", "0", "--l", "100"]) == 2


# ---------------------------------------------------------------------------------------------------
# Training end to end


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "t5"])
def test_one_step_with_offset_lr_zero_stays_prompt_tuning(saved_model, tmp_path, family):
    task = write_task(tmp_path / "data")
    common = {"train.max_steps": 1, "optim.max_grad_norm": "null", "data.max_length": 24, "data.max_target_length": 8,
              "objective.generate_eval": "false"}
    pt = train(load_config(None, overrides(saved_model(family), task, tmp_path / "pt", **common)))
    dp = train(dept_cfg(saved_model(family), task, tmp_path / "dept", **{**common, "prompt.offset_lr": 0.0}))
    assert not torch.equal(pt.model.prompt.prompt, initial_prompt(PromptConfig(num_virtual_tokens=4), pt.model.input_table.weight,
                                                                   pt.model.tokenizer, 0))  # the prompt moved
    assert torch.equal(dp.model.prompt.prompt, pt.model.prompt.prompt)
    assert torch.equal(dp.model.prompt.offset.B, torch.zeros_like(dp.model.prompt.offset.B))
    ids, mask = batch(pt.model.tokenizer, TEXTS)
    pt.model.eval(), dp.model.eval()
    assert torch.equal(logits(dp.model, ids, mask), logits(pt.model, ids, mask))
    assert dp.best["eval_loss"] == pt.best["eval_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "t5"])
def test_dept_trains_and_round_trips(saved_model, tmp_path, family):
    task = write_task(tmp_path / "data")
    result = train(dept_cfg(saved_model(family), task, tmp_path / "out", **{"train.max_steps": 8, "optim.lr": 0.3,
                                                                           "prompt.offset_lr": 0.05}))
    assert result.trainable_parameters == dept_parameters(4, 3, 24, 32)
    off = result.model.prompt.offset
    assert off.B.abs().sum() > 0 and result.best["eval_loss"] < result.before["eval_loss"]
    back = SoftPromptModel.from_adapter(result.adapter_dir)
    assert back.prompt.offset.describe() == off.describe()
    assert torch.equal(back.prompt.offset.A, off.A.detach()) and torch.equal(back.prompt.offset.B, off.B.detach())
    ids, mask = batch(back.tokenizer, TEXTS)
    result.model.eval()
    torch.testing.assert_close(logits(back, ids, mask), logits(result.model, ids, mask), atol=1e-6, rtol=1e-5)
    assert back.generate(["cat dog =", "sky ="], max_new_tokens=3) == result.model.generate(["cat dog =", "sky ="], max_new_tokens=3)
    serving = json.loads((result.adapter_dir / "serving" / "serving_meta.json").read_text())
    assert serving["token_offset"] and serving["token_offset_spec"]["type"] == "dept"
    assert (result.adapter_dir / "serving" / "token_offset.safetensors").is_file()


# ---------------------------------------------------------------------------------------------------
# Import of adapters saved by the official code


def write_official(path, base_dir, task_type, m=4, s=12, r=3, d=32, seed=0, alpha=8, transpose_a=False,
                   pickled_object=False):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(s, r, generator=g) / math.sqrt(r)
    state = {"prompt_embeddings": torch.randn(m, d, generator=g) * 0.3,
             "prompt_encoder.lora_embedding_A": a.T.contiguous() if transpose_a else a,
             "prompt_encoder.lora_embedding_B": torch.randn(r, d, generator=g) * 0.3}
    if pickled_object:
        state["args"] = argparse.Namespace(lr=0.3)  # an arbitrary object: must not be unpickled
    path.mkdir(parents=True, exist_ok=True)
    torch.save(state, path / "adapter_model.bin")
    cfg = {"peft_type": "PROMPT_TUNING_LORA", "task_type": task_type, "base_model_name_or_path": base_dir,
           "num_virtual_tokens": m, "token_dim": d, "num_transformer_submodules": 1, "r": r, "lora_alpha": alpha,
           "max_length": s, "prompt_tuning_init": "TEXT", "save_lora_embeddings": True}
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    return path, state


@pytest.mark.parametrize("family,task_type", [("t5", "SEQ_2_SEQ_LM"), ("llama", "CAUSAL_LM")])
def test_official_checkpoint_import(saved_model, tokenizer, tmp_path, family, task_type, caplog):
    path, state = write_official(tmp_path / "official", saved_model(family), task_type, alpha=5)
    model = SoftPromptModel.from_adapter(path)  # base from the adapter's base_model_name_or_path
    off = model.prompt.offset
    assert torch.equal(model.prompt.prompt.detach(), state["prompt_embeddings"])
    assert torch.equal(off.A.detach(), state["prompt_encoder.lora_embedding_A"])
    assert torch.equal(off.B.detach(), state["prompt_encoder.lora_embedding_B"])
    assert off.scaling == pytest.approx(5 / math.sqrt(3))  # lora_alpha read from the config
    assert off.fixed_length and off.padding_side == ("left" if family == "llama" else "right")
    ids, mask = batch(tokenizer, TEXTS)
    ours = logits(model, ids, mask)
    ref, ref_mask = official_logits(model, tokenizer, TEXTS, 12, off.padding_side, alpha=5.0)
    for row in range(len(TEXTS)):
        if family == "t5":
            torch.testing.assert_close(ours[row], ref[row], atol=1e-5, rtol=1e-4)
        else:
            torch.testing.assert_close(ours[row][mask[row].bool()], ref[row][ref_mask[row].bool()], atol=1e-5, rtol=1e-4)
    with caplog.at_level("WARNING", logger="softprompt.export"):
        back = SoftPromptModel.from_adapter(model.save_adapter(tmp_path / "ours"))  # converted to our format
    assert "PEFT has no type for a token offset" in caplog.text  # PEFT would silently drop A and B
    torch.testing.assert_close(logits(back, ids, mask), ours, atol=1e-6, rtol=1e-5)


def test_official_import_refuses_bad_files(saved_model, tmp_path):
    path, _ = write_official(tmp_path / "t", saved_model("t5"), "SEQ_2_SEQ_LM", transpose_a=True)
    with pytest.raises(SoftPromptError, match=r"lora_embedding_A has shape \(3, 12\), expected \(12, 3\)"):
        SoftPromptModel.from_adapter(path)
    path, _ = write_official(tmp_path / "d", saved_model("t5"), "SEQ_2_SEQ_LM", d=16)
    with pytest.raises(SoftPromptError, match="token_dim is 16"):
        SoftPromptModel.from_adapter(path)
    path, _ = write_official(tmp_path / "p", saved_model("t5"), "SEQ_2_SEQ_LM", pickled_object=True)
    with pytest.raises(SoftPromptError, match="not a plain tensor file"):
        SoftPromptModel.from_adapter(path)


# ---------------------------------------------------------------------------------------------------
# Generation offsets the generated tokens too, as training offsets target tokens


def greedy_over_forward(model, ids, mask, steps):
    """Greedy decoding by re-running the full forward each step: every real token, generated ones
    included, gets its offset row exactly as in training. (B, steps) new ids."""
    out = []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(ids, mask).logits  # (B, T, V)
        last = mask.long().cumsum(1).argmax(1)  # (B,) the last real column (right padding)
        nxt = logits[torch.arange(len(ids)), last].argmax(-1)  # (B,)
        out.append(nxt)
        ids = torch.cat([ids, torch.zeros_like(nxt)[:, None]], 1)  # (B, T+1)
        mask = torch.cat([mask, torch.zeros_like(nxt)[:, None]], 1)
        ids[torch.arange(len(ids)), last + 1] = nxt  # right after each row's last real token
        mask[torch.arange(len(ids)), last + 1] = 1
    return torch.stack(out, 1)


@pytest.mark.parametrize("execution", ["shared_prefix", "concat"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_causal_generate_offsets_generated_tokens(tokenizer, side, execution):
    dept, _ = tiny("llama", tokenizer, s=32)
    dept.execution = execution
    with torch.no_grad():
        dept.prompt.offset.B.mul_(4.0)  # a large offset, so a missed row changes the argmax
    ids, mask = batch(tokenizer, TEXTS, side)
    got = dept.generate(ids, mask, max_new_tokens=8, min_new_tokens=8, eos_token_id=None, pad_token_id=0)
    right_ids, right_mask = batch(tokenizer, TEXTS, "right")
    want = greedy_over_forward(dept, right_ids, right_mask, 8)
    assert torch.equal(got, want)
    beams = dept.generate(ids, mask, max_new_tokens=4, num_beams=2, eos_token_id=None, pad_token_id=0)
    assert beams.shape == (len(TEXTS), 4)  # the hook follows generate's beam expansion


def test_generated_tokens_past_s_take_no_offset(tokenizer):
    """Generation cannot be refused halfway: tokens past s get none (the same as overflow=truncate)."""
    dept, _ = tiny("llama", tokenizer, s=8, overflow="truncate")
    ids, mask = batch(tokenizer, TEXTS[:1])  # 7 tokens: generated tokens cross s=8 at once
    got = dept.generate(ids, mask, max_new_tokens=5, min_new_tokens=5, eos_token_id=None, pad_token_id=0)
    assert torch.equal(got, greedy_over_forward(dept, ids, mask, 5))


def test_dept_generate_with_prompt_lookup_equals_greedy(tokenizer):
    """Candidate decoding proposes tokens and rejects some: the offset rows follow the tokens kept."""
    from test_cached_generate import skip_unless_lookup_from_embeddings

    dept, _ = tiny("llama", tokenizer, s=64)
    skip_unless_lookup_from_embeddings(dept.base)
    with torch.no_grad():
        dept.prompt.offset.B.mul_(4.0)
    ids, mask = batch(tokenizer, ["the cat sat on the mat the cat sat on the mat"])
    got = dept.generate(ids, mask, max_new_tokens=12, min_new_tokens=12, eos_token_id=None, pad_token_id=0,
                        prompt_lookup_num_tokens=4)
    assert torch.equal(got, greedy_over_forward(dept, ids, mask, 12))
