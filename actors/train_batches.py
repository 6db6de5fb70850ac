"""Which samples and contrast pairs each optimizer step of a training holds: length-grouped and seeded.

A plan is a list of steps; a step is a list of micro-batches `(kind, indices)`, kind "answer" or
"explain" (indices into the samples; every explanation-type task is "explain"), "sample" (samples of
any task, loss_balance "token") or "pair" (indices into the contrast pairs). Grouping by length
(shuffle, then sort inside chunks of 64 batches) keeps padding low; the whole plan follows from the
seed, and the trainer stores it in every checkpoint.
"""

from __future__ import annotations

import math
import random

SORT_CHUNK_BATCHES = 64

Step = list[tuple[str, list[int]]]


def length_sorted(lengths: dict[int, int], rng: random.Random, batch_size: int) -> list[int]:
    """The indices shuffled, then sorted by length inside chunks of SORT_CHUNK_BATCHES batches: neighbours
    have similar lengths while batch compositions change from epoch to epoch."""
    order = list(lengths)
    rng.shuffle(order)
    chunk = batch_size * SORT_CHUNK_BATCHES
    out: list[int] = []
    for start in range(0, len(order), chunk):
        out += sorted(order[start : start + chunk], key=lambda i: lengths[i])
    return out


def split(items: list[int], parts: int) -> list[list[int]]:
    """`items` cut into `parts` contiguous pieces whose sizes differ by at most one."""
    n = len(items)
    return [items[k * n // parts : (k + 1) * n // parts] for k in range(parts)]


def token_plan(
    sample_lengths: list[int], pair_lengths: list[int], batch_size: int, grad_accum: int, epochs: float, seed: int
) -> list[Step]:
    """loss_balance "token": micro-batches of `batch_size` samples or pairs, grouped by length within each
    kind, shuffled together per epoch, `grad_accum` of them per step."""
    micro: list[tuple[str, list[int]]] = []
    per_epoch = 0
    for epoch in range(math.ceil(epochs)):
        rng = random.Random(f"tutorloop-train/{seed}/{epoch}")
        batches = []
        for kind, lengths in (("sample", sample_lengths), ("pair", pair_lengths)):
            order = length_sorted(dict(enumerate(lengths)), rng, batch_size)
            batches += [(kind, order[j : j + batch_size]) for j in range(0, len(order), batch_size)]
        rng.shuffle(batches)
        per_epoch = len(batches)
        micro += batches
    micro = micro[: max(1, round(epochs * per_epoch))]
    return [micro[j : j + grad_accum] for j in range(0, len(micro), grad_accum)]


def per_task_plan(
    groups: dict[str, dict[int, int]], batch_size: int, grad_accum: int, epochs: float, seed: int
) -> list[Step]:
    """loss_balance "per_task": every step holds a share of every group (kind -> {index: length}).

    An epoch has as many steps as a plain split into `batch_size` micro-batches, `grad_accum` per step,
    would give (so a step holds about batch_size * grad_accum records, as before). Each group is
    length-sorted and cut into that many contiguous pieces, whose order is shuffled; step k gets piece
    k of every group, split into micro-batches of at most `batch_size`. A group with fewer records than
    the epoch has steps puts one record into each of that many randomly chosen steps.
    """
    groups = {kind: members for kind, members in groups.items() if members}
    batches = sum(math.ceil(len(members) / batch_size) for members in groups.values())
    per_epoch = max(1, math.ceil(batches / grad_accum))
    steps: list[Step] = []
    for epoch in range(math.ceil(epochs)):
        rng = random.Random(f"tutorloop-train/{seed}/{epoch}")
        epoch_steps: list[Step] = [[] for _ in range(per_epoch)]
        for kind, members in groups.items():
            pieces = split(length_sorted(members, rng, batch_size), min(per_epoch, len(members)))
            rng.shuffle(pieces)
            slots = range(per_epoch) if len(pieces) == per_epoch else sorted(rng.sample(range(per_epoch), len(pieces)))
            for slot, piece in zip(slots, pieces):
                epoch_steps[slot] += [(kind, part) for part in split(piece, math.ceil(len(piece) / batch_size))]
        steps += epoch_steps
    return steps[: max(1, round(epochs * per_epoch))]
