#!/usr/bin/env python
"""Training- and eval-step time of two revisions of softprompt, side by side in one run.

    .venv/bin/python bench/bench_revisions.py --base 19d9c0b            # ~5-10 min on 2 CPU cores
    .venv/bin/python bench/bench_revisions.py --base 19d9c0b --sizes 10m --steps 3 --out /tmp   # smoke run

Question: does the code at `--head` (default: the working tree this script lives in, uncommitted changes
included, as they are when the run starts) take longer per step than the code at `--base` (default 19d9c0b)?

Method
- The base revision is checked out as a detached `git worktree` under /tmp (reused if it is already there,
  removed at the end unless --keep-worktree), so its `softprompt` package is importable from that
  directory without touching this checkout.
- The head, when it is a working tree (the default), is its softprompt/ package copied to /tmp at the start:
  the tree may be edited while the run goes on, and a module imported late would then come from another
  state than the one reported. The report lists the files that differ from the tree's commit and hashes
  the copy. A revision given as --head is checked out like the base.
- One worker subprocess per revision runs *this* file with `--worker --root <tree>`: it puts <tree> first on
  sys.path and imports `softprompt` from there (the editable install's finder comes after sys.path, so
  the tree wins; the worker checks `softprompt.__file__` and the report prints it). Both revisions thus run
  the same harness, the same torch and the same transformers; only the package under test differs.
- The parent drives the workers over stdin/stdout, one JSON object per line, and never runs two steps at
  once: it alternates the revisions step by step (A B, then B A, then A B, ...), so slow phases of a noisy
  machine hit both alike, and which revision runs first in a round (cache, allocator warmth, the other
  process's leftovers) does not favour either. Each worker times its own step (perf_counter and process
  CPU time around the step only), so the pipe round trip is not counted.
- Workloads, built identically in both workers from the public API both revisions share:
  a random Llama-style causal LM (`torch.manual_seed(0)` before construction) at "10m" (d 256, 4 layers)
  and "100m" (d 768, 12 layers), vocab 32000; prompt tuning ("pt", 20 virtual tokens) and DePT ("dept",
  m = 10 rows + a rank-8 offset over s = 64 positions); a batch of 8 rows x 64 random tokens, all real, the
  last 16 of each row the target. A train step is forward + backward + AdamW on the trainable tensors;
  an eval step is the no-grad loss in eval mode.
- Per (size, workload) each worker builds a fresh model; the eval phase runs first (it leaves the model
  unchanged), then the train phase. So the first step of *both* phases sees the untouched model, and its
  loss must be bit-identical between the revisions if the refactor did not change the computation; the
  last train loss (after all the AdamW steps) being equal too shows the updates match as well.
- Each phase: 2 warm-up rounds, then N timed rounds (--steps; default 15 for 10m, 8 for 100m). Reported:
  the median seconds per step of each revision, head/base of those medians, and the min..max of the
  per-round ratios (the two steps of a round run back to back, so a round's ratio is the least
  load-sensitive single sample). Process CPU time is recorded too; with one thread per worker it differs
  from wall time mostly when the machine was busy with something else.
- torch runs one thread per worker by default (--threads), set before torch is imported, so the two
  processes never compete for the 2 cores and no idle OpenMP pool spins in the background.

Results: bench/results/revisions_issue10.json (raw per-step numbers, versions, machine, git revisions) and
bench/results/revisions_issue10.md (the table and the command).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# transformers.LlamaConfig keyword arguments per size; vocab and max positions are shared
SIZES = {
    "10m": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4),
    "100m": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
}
DEFAULT_STEPS = {"10m": 15, "100m": 8}
WORKLOADS = ("pt", "dept")
PHASES = ("eval", "train")  # eval first: it leaves the model untouched, so both first losses see the initial model
VOCAB = 32000
BATCH, LENGTH = 8, 64  # every row LENGTH real tokens
SOURCE_TOKENS = 48  # labels are -100 over the first 48 positions: the last 16 tokens are the target
PT_TOKENS = 20
DEPT_ROWS, DEPT_RANK = 10, 8  # DePT's s is the batch width, LENGTH
WARMUP = 2


# ---------------------------------------------------------------------------------------------------
# Worker: one per revision; imports softprompt from --root and runs steps on request


class Bench:
    """The model, optimizer and batch of one (size, workload), built from the revision's softprompt."""

    def __init__(self, root: Path, threads: int):
        sys.path.insert(0, str(root))  # before the editable install's finder, which comes after sys.path
        import torch
        import transformers

        torch.set_num_threads(threads)
        import softprompt
        from softprompt.layers import DeptOffset, PromptEmbedding
        from softprompt.model import SoftPromptModel

        self.file = Path(softprompt.__file__).resolve()
        if root.resolve() not in self.file.parents:
            raise RuntimeError(f"softprompt was imported from {self.file}, not from {root}")
        self.torch, self.transformers = torch, transformers
        self.PromptEmbedding, self.DeptOffset, self.SoftPromptModel = PromptEmbedding, DeptOffset, SoftPromptModel
        self.model = self.opt = self.batch = None

    def info(self) -> dict:
        torch = self.torch
        return {"softprompt_file": str(self.file), "torch": torch.__version__,
                "transformers": self.transformers.__version__, "python": platform.python_version(),
                "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads()}

    def setup(self, size: str, workload: str) -> dict:
        torch = self.torch
        self.model = self.opt = self.batch = None  # the previous model's memory is free before the next is built
        torch.manual_seed(0)
        cfg = self.transformers.LlamaConfig(vocab_size=VOCAB, max_position_embeddings=512, **SIZES[size])
        base = self.transformers.LlamaForCausalLM(cfg)
        d = cfg.hidden_size
        if workload == "pt":
            prompt = torch.randn(PT_TOKENS, d, generator=torch.Generator().manual_seed(0)) * 0.5
            source = self.PromptEmbedding(prompt)
        elif workload == "dept":
            prompt = torch.randn(DEPT_ROWS, d, generator=torch.Generator().manual_seed(0)) * 0.5
            offset = self.DeptOffset(LENGTH, DEPT_RANK, d, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():  # B starts at zero; a nonzero offset is what a trained one costs
                offset.B.normal_(0, 0.01, generator=torch.Generator().manual_seed(1))
            source = self.PromptEmbedding(prompt, offset=offset)
        else:
            raise ValueError(f"unknown workload {workload!r}")
        self.model = self.SoftPromptModel(base, source).train()
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-3)
        ids = torch.randint(3, VOCAB, (BATCH, LENGTH), generator=torch.Generator().manual_seed(1))
        labels = ids.clone()
        labels[:, :SOURCE_TOKENS] = -100
        self.batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        return {"execution_mode": self.model.execution_mode(), "trainable": self.model.trainable_parameters(),
                "base_parameters": sum(p.numel() for p in base.parameters())}

    def step(self, phase: str) -> dict:
        torch, model = self.torch, self.model
        wall, cpu = time.perf_counter(), time.process_time()
        if phase == "train":
            out = model(**self.batch, right_padded=True)
            out.loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            loss = out.loss
        elif phase == "eval":
            model.eval()
            with torch.no_grad():
                loss = model(**self.batch, right_padded=True).loss
            model.train()
        else:
            raise ValueError(f"unknown phase {phase!r}")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        # a Python float holds a float32 exactly and json writes floats round-trippably: equality is bitwise
        return {"wall_s": wall, "cpu_s": cpu, "loss": loss.item()}


def worker(root: Path, threads: int) -> None:
    protocol = sys.stdout
    sys.stdout = sys.stderr  # anything a library prints must not land in the JSON line stream

    def reply(obj: dict) -> None:
        protocol.write(json.dumps(obj) + "\n")
        protocol.flush()

    try:
        bench = Bench(root, threads)
        reply(bench.info())
    except Exception:
        reply({"error": traceback.format_exc()})
        return
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["cmd"] == "setup":
                reply(bench.setup(msg["size"], msg["workload"]))
            elif msg["cmd"] == "step":
                reply(bench.step(msg["phase"]))
            elif msg["cmd"] == "exit":
                return
            else:
                raise ValueError(f"unknown command {msg['cmd']!r}")
        except Exception:
            reply({"error": traceback.format_exc()})


# ---------------------------------------------------------------------------------------------------
# Parent: worktrees, workers, the interleaved schedule, the report


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def describe(rev: str) -> dict:
    sha = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    return {"rev": rev, "sha": sha, "subject": git("log", "-1", "--format=%s", sha)}


def describe_tree(tree: Path) -> dict:
    sha = git("rev-parse", "HEAD", cwd=tree)
    return {"rev": "HEAD", "sha": sha, "subject": git("log", "-1", "--format=%s", sha, cwd=tree)}


def checkout(rev: str) -> tuple[Path, dict, bool]:
    """(tree, revision info, created) for a detached worktree of `rev` under the temp directory."""
    info = describe(rev)
    path = Path(tempfile.gettempdir()) / f"softprompt-bench-{info['sha'][:12]}"
    if path.exists():  # left by an earlier (interrupted or --keep-worktree) run: reuse if it is that commit
        if not (path / ".git").is_file() or git("rev-parse", "HEAD", cwd=path) != info["sha"]:
            raise SystemExit(f"{path} exists but is not a worktree at {info['sha']}; remove it first")
        return path, info, False
    git("worktree", "prune")  # a registration whose directory is gone would block `worktree add`
    git("worktree", "add", "--detach", str(path), info["sha"])
    return path, info, True


def snapshot(tree: Path) -> tuple[Path, dict]:
    """(copy, info) of `tree`'s softprompt/ package as it is now, in a fresh temp directory.

    The working tree may be edited while the benchmark runs (and modules are imported lazily), so the head
    worker imports a frozen copy: what ran is exactly what the report describes. `info` compares the copy
    file by file with the commit checked out in `tree` (git blob ids), and hashes its whole content."""
    info = describe_tree(tree)
    committed = {}  # path -> blob id at that commit
    for line in git("ls-tree", "-r", info["sha"], "--", "softprompt", cwd=tree).splitlines():
        meta, path = line.split("\t", 1)
        committed[path] = meta.split()[2]
    copy = Path(tempfile.mkdtemp(prefix="softprompt-bench-head-"))
    shutil.copytree(tree / "softprompt", copy / "softprompt", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    files = sorted(str(f.relative_to(copy)) for f in (copy / "softprompt").rglob("*") if f.is_file())
    blobs = dict(zip(files, git("hash-object", "--", *files, cwd=copy).splitlines()))
    content = hashlib.sha256()
    for f in files:
        content.update(f.encode() + b"\0" + (copy / f).read_bytes() + b"\0")
    info.update(working_tree=str(tree), snapshot_time=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                softprompt_sha256=content.hexdigest(),
                softprompt_changed=[f for f in files if f in committed and blobs[f] != committed[f]],
                softprompt_added=[f for f in files if f not in committed],
                softprompt_deleted=[f for f in committed if f not in blobs],
                status=git("status", "--porcelain", cwd=tree).splitlines())
    info["softprompt_dirty"] = bool(info["softprompt_changed"] or info["softprompt_added"] or info["softprompt_deleted"])
    return copy, info


class Worker:
    """Parent-side handle of one worker process."""

    def __init__(self, name: str, tree: Path, threads: int):
        self.name = name
        # OpenMP/MKL read these at load time, before torch.set_num_threads runs: with one thread no pool
        # exists whose idle threads could spin on the core the other worker is timing on
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        env.pop("PYTHONPATH", None)  # sys.path must hold this revision's tree and nothing else of ours
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--root", str(tree), "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} worker exited (rc {self.proc.wait()}); its stderr is above")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.name} worker failed:\n{reply['error']}")
        return reply

    def ask(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def summarize(steps: dict[str, list[dict]]) -> dict:
    """Medians per revision, head/base of the medians, and the spread of the per-round ratios."""
    out = {}
    for key in ("wall_s", "cpu_s"):
        base = [s[key] for s in steps["base"]]
        head = [s[key] for s in steps["head"]]
        rounds = [h / b for h, b in zip(head, base)]  # round i: the two steps ran back to back
        out[key] = {"base_median": statistics.median(base), "head_median": statistics.median(head),
                    "ratio": statistics.median(head) / statistics.median(base),
                    "round_ratio_median": statistics.median(rounds), "round_ratio_min": min(rounds),
                    "round_ratio_max": max(rounds)}
    return out


def run_case(workers: dict[str, Worker], size: str, workload: str, steps: int) -> dict:
    setup = {name: w.ask(cmd="setup", size=size, workload=workload) for name, w in workers.items()}
    case = {"size": size, "workload": workload, "setup": setup, "phases": {}}
    for phase in PHASES:
        timed: dict[str, list[dict]] = {"base": [], "head": []}
        losses: dict[str, list[float]] = {"base": [], "head": []}
        for i in range(WARMUP + steps):
            # swap who goes first each round, so neither revision always runs right after the other
            for name in ("base", "head") if i % 2 == 0 else ("head", "base"):
                r = workers[name].ask(cmd="step", phase=phase)
                losses[name].append(r["loss"])
                if i >= WARMUP:
                    timed[name].append({k: r[k] for k in ("wall_s", "cpu_s")})
        stats = summarize(timed)
        case["phases"][phase] = {
            "steps": timed, "losses": losses, **stats,
            "first_loss": {n: losses[n][0] for n in losses}, "first_loss_equal": losses["base"][0] == losses["head"][0],
            "last_loss": {n: losses[n][-1] for n in losses}, "last_loss_equal": losses["base"][-1] == losses["head"][-1],
        }
        w = stats["wall_s"]
        print(f"  {size} {workload} {phase}: base {w['base_median'] * 1e3:.1f} ms, head {w['head_median'] * 1e3:.1f} ms, "
              f"head/base {w['ratio']:.3f} (rounds {w['round_ratio_min']:.3f}..{w['round_ratio_max']:.3f}); "
              f"first loss base {losses['base'][0]!r} head {losses['head'][0]!r}"
              + ("" if losses["base"][0] == losses["head"][0] else "  <-- MISMATCH"), flush=True)
    return case


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def head_changes(head: dict) -> str:
    """How a snapshotted working tree differs from its commit, for the report."""
    where = f"the working tree of {head['working_tree']}, copied at {head['snapshot_time']}"
    if not head["softprompt_dirty"]:
        return f"{where}; softprompt/ equal to that commit"
    parts = [f"{kind} {', '.join(head['softprompt_' + kind])}" for kind in ("changed", "added", "deleted")
             if head["softprompt_" + kind]]
    return f"{where}; softprompt/ {'; '.join(parts)} (content sha256 {head['softprompt_sha256'][:12]})"


def report_md(result: dict) -> str:
    meta = result["meta"]
    base, head = meta["base"], meta["head"]
    head_label = f"{head['sha'][:7]}" + (" + uncommitted changes" if head.get("softprompt_dirty") else "")
    lines = [f"# Step time: {head_label} (head) against {base['sha'][:7]} (base)", "",
             "```", meta["command"], "```", "",
             f"- base: `{base['sha'][:7]}` {base['subject']}",
             f"- head: `{head['sha'][:7]}` {head['subject']}" + (f" + {head_changes(head)}" if head.get("working_tree") else ""),
             f"- softprompt imported from: base `{meta['workers']['base']['softprompt_file']}`, "
             f"head `{meta['workers']['head']['softprompt_file']}`",
             f"- {meta['machine']['cpu']}, {meta['machine']['cpu_count']} cores; torch {meta['workers']['head']['torch']}, "
             f"transformers {meta['workers']['head']['transformers']}, Python {meta['machine']['python']}; "
             f"{meta['threads']} torch thread(s) per worker",
             f"- load average before / after: {meta['loadavg_before']} / {meta['loadavg_after']}; "
             f"wall time {meta['wall_s'] / 60:.1f} min", "",
             f"Batch {BATCH} x {LENGTH} tokens (last {LENGTH - SOURCE_TOKENS} the target); pt = {PT_TOKENS} virtual tokens, "
             f"dept = {DEPT_ROWS} rows + rank-{DEPT_RANK} offset over s = {LENGTH}. Steps alternate between the "
             f"revisions (who goes first swaps each round); {WARMUP} warm-up rounds, then "
             + ", ".join(f"{n} timed rounds for {s}" for s, n in meta["steps"].items())
             + ". Median wall time per step; ratio = head median / base median (< 1: head faster), with the "
               "min..max of the per-round ratios. CPU ratio: the same for process CPU time. Loss equal: the first "
               "step's loss (on the untouched model) is bit-identical between the revisions.", "",
             "| size | workload | phase | base median (ms) | head median (ms) | ratio head/base | per-round range "
             "| CPU-time ratio | first-step loss equal | execution mode |",
             "|---|---|---|---:|---:|---:|---|---:|---|---|"]
    for case in result["cases"]:
        modes = {case["setup"][n]["execution_mode"] for n in ("base", "head")}
        mode = modes.pop() if len(modes) == 1 else \
            f"base {case['setup']['base']['execution_mode']} / head {case['setup']['head']['execution_mode']}"
        for phase, p in case["phases"].items():
            w, c = p["wall_s"], p["cpu_s"]
            lines.append(f"| {case['size']} | {case['workload']} | {phase} | {w['base_median'] * 1e3:.1f} | "
                         f"{w['head_median'] * 1e3:.1f} | {w['ratio']:.3f} | {w['round_ratio_min']:.3f} .. "
                         f"{w['round_ratio_max']:.3f} | {c['ratio']:.3f} | {'yes' if p['first_loss_equal'] else '**NO**'} "
                         f"| {mode} |")
    lines += ["", "Losses (first step; last step after all the phase's steps, which for train includes every AdamW update):",
              "", "| size | workload | phase | first loss base | first loss head | last loss equal |", "|---|---|---|---|---|---|"]
    for case in result["cases"]:
        for phase, p in case["phases"].items():
            lines.append(f"| {case['size']} | {case['workload']} | {phase} | {p['first_loss']['base']!r} | "
                         f"{p['first_loss']['head']!r} | {'yes' if p['last_loss_equal'] else '**NO**'} |")
    return "\n".join(lines) + "\n"


def command_line() -> str:
    exe = Path(sys.executable)  # unresolved: the venv's python is usually a symlink out of the venv
    exe_text = str(exe.relative_to(ROOT)) if ROOT in exe.parents else str(exe)  # as typed from the repo root
    return shlex.join([exe_text, str(Path(__file__).resolve().relative_to(ROOT)), *sys.argv[1:]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="19d9c0b", help="revision to compare against (checked out as a worktree)")
    ap.add_argument("--head", default=None, help="a working tree (its softprompt/ is copied at the start), or a revision; default: this repository's working tree")
    ap.add_argument("--steps", type=int, default=None, help="timed rounds per phase (default: 15 for 10m, 8 for 100m)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--sizes", default=",".join(SIZES), help="comma-separated subset of " + ", ".join(SIZES))
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset of " + ", ".join(WORKLOADS))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--name", default="revisions_issue10", help="file stem of the .json and .md results")
    ap.add_argument("--keep-worktree", action="store_true", help="leave the /tmp worktree(s) for the next run")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.root, args.threads)
        return

    sizes = [s for s in args.sizes.split(",") if s]
    workloads = [w for w in args.workloads.split(",") if w]
    for s in sizes:
        if s not in SIZES:
            ap.error(f"--sizes: unknown size {s!r}")
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"--workloads: unknown workload {w!r}")
    steps = {s: args.steps or DEFAULT_STEPS[s] for s in sizes}

    start = time.perf_counter()
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    made: list[Path] = []  # worktrees this run created or reused, removed at the end
    snapshots: list[Path] = []  # copies of a working tree's package, removed at the end
    workers: dict[str, Worker] = {}
    try:
        base_tree, base_info, _ = checkout(args.base)
        made.append(base_tree)
        if args.head is None or Path(args.head).is_dir():  # a working tree: its package, copied now
            head_tree, head_info = snapshot(Path(args.head).resolve() if args.head else ROOT)
            snapshots.append(head_tree)
        else:
            head_tree, head_info, _ = checkout(args.head)
            made.append(head_tree)
        print(f"base {base_info['sha'][:7]} at {base_tree}\nhead {head_info.get('sha', '?')[:7]} at {head_tree}", flush=True)

        # started one after the other: the two imports of torch would otherwise share the 2 cores
        workers["base"] = Worker("base", base_tree, args.threads)
        workers["head"] = Worker("head", head_tree, args.threads)
        for name, w in workers.items():
            print(f"{name}: softprompt from {w.info['softprompt_file']}", flush=True)

        cases = []
        for size in sizes:
            for workload in workloads:
                print(f"{size} {workload}: building the models ...", flush=True)
                cases.append(run_case(workers, size, workload, steps[size]))
    finally:
        for w in workers.values():
            w.close()
        if not args.keep_worktree:
            for tree in made:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
            for copy in snapshots:
                shutil.rmtree(copy, ignore_errors=True)

    meta = {"command": command_line(), "python_executable": sys.executable, "base": base_info, "head": head_info,
            "base_tree": str(base_tree), "head_tree": str(head_tree), "threads": args.threads, "warmup": WARMUP,
            "steps": steps, "batch": BATCH, "length": LENGTH, "source_tokens": SOURCE_TOKENS,
            "workers": {n: w.info for n, w in workers.items()}, "machine": machine(),
            "loadavg_before": loadavg_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "wall_s": time.perf_counter() - start}
    result = {"meta": meta, "cases": cases}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    md = report_md(result)
    (args.out / f"{args.name}.md").write_text(md)
    print("\n" + md)
    print(f"wrote {args.out / args.name}.json and .md ({meta['wall_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
