#!/usr/bin/env python
"""GPU check for serving (issue "Interop and serving"): the embedded demo model (a Llama) served by vLLM's offline
engine with prompt embeddings on, fed `softprompt.serving`'s rows for a plain, a DePT and a bank adapter;
vLLM's greedy continuations are compared with `SoftPromptModel.generate` on the same texts.

    python bench/gpu_check_vllm.py --out bench/results/gpu_check_vllm.json

Needs a CUDA GPU and vllm importable in this environment (vLLM's own wheel pins its torch; nothing is
downloaded here). It records what ran: versions, GPU, per adapter the texts whose continuations match token
for token. Float differences between vLLM's kernels and HF's can flip a greedy choice on a near-tie, so a
mismatch is reported with the first differing position, not hidden.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEXTS = ["the cat sat on the", "fulusheel =", "one two three", "red green blue"]


def adapters(seed: int = 0) -> dict:
    """Three prompt kinds on the demo model, with rows of a realistic scale (vocabulary init plus noise)."""
    from softprompt import SoftPromptModel
    from softprompt.layers import PromptBank, PromptEmbedding
    from softprompt.layers.dept import DeptOffset
    from softprompt.selectors.key import KeySelector

    g = torch.Generator().manual_seed(seed)
    plain = SoftPromptModel.from_pretrained("demo", num_virtual_tokens=8, seed=seed)
    base, tokenizer, d = plain.base, plain.tokenizer, plain.prompt.dim
    rows = plain.prompt.prompt.detach()  # (8, d)
    offset = DeptOffset(64, 4, d, padding_side="left", generator=g)
    with torch.no_grad():
        offset.B.normal_(std=0.05, generator=g)
    dept = SoftPromptModel(base, PromptEmbedding(rows, offset=offset), tokenizer, "causal", base_config="demo")
    bank_rows = torch.stack([rows + 0.05 * torch.randn(rows.shape, generator=g) for _ in range(3)])  # (3, 8, d)
    bank = SoftPromptModel(base, PromptBank(bank_rows), tokenizer, "causal", base_config="demo",
                           selector=KeySelector(torch.randn(3, d, generator=g)))
    return {"plain": plain.eval(), "dept": dept.eval(), "bank": bank.eval()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_check_vllm.json")
    ap.add_argument("--max-tokens", type=int, default=8)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check_vllm: no CUDA GPU here; run it on a GPU machine", file=sys.stderr)
        return 2
    try:
        import vllm
        from vllm import LLM, SamplingParams
    except ImportError:
        print("gpu_check_vllm: vllm is not importable here; install vllm (it brings its own torch) and rerun",
              file=sys.stderr)
        return 2
    from softprompt import serving
    from softprompt.loading import resolve_model_path

    started = time.time()
    models = adapters()
    llm = LLM(model=str(resolve_model_path("demo")), enable_prompt_embeds=True, dtype="float32",
              gpu_memory_utilization=0.3, enforce_eager=True)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    report = {"vllm": vllm.__version__, "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0),
              "max_tokens": args.max_tokens, "adapters": {}}
    for name, model in models.items():
        rows = [serving.engine_rows(model, serving.embeddings(model, text), "vllm") for text in TEXTS]
        outputs = llm.generate([{"prompt_embeds": r} for r in rows], params)
        results = []
        for text, out in zip(TEXTS, outputs):
            ids = torch.tensor([model.tokenizer(text)["input_ids"]])
            ours = model.generate(ids, max_new_tokens=args.max_tokens, eos_token_id=None)[0].tolist()
            theirs = list(out.outputs[0].token_ids)
            first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
            results.append({"text": text, "ours": ours, "vllm": theirs, "match": ours == theirs,
                            "first_difference": first})
        report["adapters"][name] = {"matches": sum(r["match"] for r in results), "of": len(results), "rows": results}
        print(f"{name}: {report['adapters'][name]['matches']}/{len(results)} continuations match vLLM's", flush=True)
    report["wall_s"] = time.time() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
