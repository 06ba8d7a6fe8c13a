"""Evaluation split across processes: each rank scores a contiguous shard of the rows, the parts are gathered,
and every rank computes the same metrics from all of them.

An objective evaluates in two steps (objectives/__init__.py): `eval_parts(model, items, batch_size)` runs the
model and returns `EvalParts` (additive totals, such as a loss sum and its token count, and per-row results,
such as generated texts or class scores, in item order); `eval_metrics(parts, items)` turns parts over all
`items` into metrics. `objective.evaluate` is the two in one process, the plain twin of `evaluate` here. Sums
add and rows concatenate in rank order, so the metrics are the single-process ones up to the float rounding of
other batch compositions (tests/test_distributed.py checks 2 processes against 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from softprompt import distributed


@dataclass
class EvalParts:
    sums: dict[str, float] = field(default_factory=dict)  # additive over rows: totals and their counts
    rows: dict[str, list] = field(default_factory=dict)  # one entry per row, in item order

    def __add__(self, other: "EvalParts") -> "EvalParts":
        """These rows followed by `other`'s (the next shard): sums add, row lists concatenate."""
        return EvalParts({k: self.sums.get(k, 0.0) + other.sums.get(k, 0.0) for k in self.sums.keys() | other.sums.keys()},
                         {k: list(self.rows.get(k, [])) + list(other.rows.get(k, [])) for k in self.rows.keys() | other.rows.keys()})


def shard(n: int, rank: int, world: int) -> slice:
    """Rank `rank`'s contiguous share of n rows (sizes differ by at most one; concatenated in rank order they
    are the rows in order)."""
    return slice(rank * n // world, (rank + 1) * n // world)


def parts(objective, model, items: list[dict], batch_size: int, accelerator=None) -> EvalParts:
    """`objective.eval_parts` over all `items`, each process scoring its shard; every process gets the whole."""
    world = accelerator.num_processes if accelerator is not None else 1
    if world == 1:
        with distributed.gathered(model):
            return objective.eval_parts(model, items, batch_size)
    from accelerate.utils import gather_object

    rows = items[shard(len(items), accelerator.process_index, world)]
    if getattr(model, "lockstep", False):
        mine = lockstep_parts(objective, model, items, rows, batch_size, world)
    else:
        mine = objective.eval_parts(model, rows, batch_size)
    gathered = gather_object([mine])  # one EvalParts per rank, in rank order
    total = EvalParts()
    for part in gathered:
        total = total + part
    return total


def lockstep_parts(objective, model, items: list[dict], rows: list[dict], batch_size: int, world: int) -> EvalParts:
    """This process's `rows` a batch at a time, as many batches as the longest shard needs (a sharded base: every
    forward gathers each unit from every process, so all run the same forwards in the same order). A process out
    of rows scores one of `items` like the others score theirs, and drops it."""
    sizes = [len(range(len(items))[shard(len(items), r, world)]) for r in range(world)]
    mine = EvalParts()
    with distributed.gathered(model):
        for b in range(distributed.lockstep_batches(sizes, batch_size)):
            batch = rows[b * batch_size:(b + 1) * batch_size]
            part = objective.eval_parts(model, batch or items[:1], batch_size)
            if batch:
                mine = mine + part
    return mine


def evaluate(objective, model, items: list[dict], batch_size: int, accelerator=None) -> dict[str, float]:
    """The objective's metrics over `items`, the scoring shared by every process (see the module docstring).
    An objective with `evaluate` alone (one written before the two steps) is run whole by every process."""
    if not hasattr(objective, "eval_parts"):
        with distributed.gathered(model):
            return objective.evaluate(model, items, batch_size)
    return objective.eval_metrics(parts(objective, model, items, batch_size, accelerator), items)
