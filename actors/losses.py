"""Loss terms of the student's training, as plain tensor functions.

Multi-task objective (Li et al. 2022), `training.loss_balance: per_task` (the default). The loss of
one optimizer step is

    loss = alpha * L_answer + (1 - alpha) * L_explain (+ reflection_weight * L_contrast)

where each L is the weighted mean NLL over that task's own target tokens in the step,
L = sum_i w_i * sum_t nll_it / sum_i w_i * n_i, with n_i the target tokens (+ EOS) of sample i and
w_i its teacher's loss_weight (1 for the gold answers). Every explanation-type task (explain,
rationalize, a teacher's tag) belongs to L_explain, so teachers' weights set their shares inside it.
The step planner (train_batches.py) puts both tasks into every step, each in its own length-grouped
micro-batches, and the denominators are the step's totals, so gradient accumulation gives the same
loss as one big batch. Why per task: explanations are ten times longer than answers, so a mean over
all tokens gave the answer task about 3% of the weight at alpha 0.5 and alpha barely mattered; with
per-task means alpha is the share each task gets, whatever their lengths. A step that holds one task
only (a task with fewer samples than the epoch has steps) uses that task alone, with coefficient 1;
alpha 0 or 1 leaves the other task out of the training altogether.

`training.loss_balance: token` keeps the earlier objective: every target token carries
c_i = task_coefficient(task_i, alpha) * w_i, a micro-batch of n samples contributes
sum_i c_i * sum_t nll_it / (n * mean_target_tokens) (the mean target length over the whole set, a
constant), and batches mix both tasks as length grouping falls: a global token-level mean in which
alpha weighs tokens, not tasks.

Self-reflection (Wang et al. 2023): triplet margin loss on the last-token hidden state with distance
1 - cosine; or, as an alternative, a DPO-style preference loss on sequence log-likelihoods against
the policy the training starts from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ANSWER_TASK = "answer"


def task_coefficient(task: str, alpha: float) -> float:
    """alpha for the answer task; 1 - alpha for every explanation-type task (explain, rationalize, a teacher tag)."""
    return alpha if task == ANSWER_TASK else 1.0 - alpha


def task_group(task: str) -> str:
    """ "answer" for the answer task, "explain" for every explanation-type task."""
    return ANSWER_TASK if task == ANSWER_TASK else "explain"


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL, number of target tokens) per sequence; labels -100 are ignored, next-token shift inside."""
    shifted = logits[:, :-1, :].float()
    target = labels[:, 1:]
    nll = F.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="none"
    ).view(target.shape)
    counts = (target != -100).sum(-1)
    return nll.sum(-1), counts


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed log-likelihood of each sequence's target tokens, shape [batch]."""
    total, _ = token_nll(logits, labels)
    return -total


def task_totals(nll_sum: torch.Tensor, counts: torch.Tensor, tasks: list[str]) -> dict[str, tuple[float, int]]:
    """Per task the raw (summed NLL, token count) of a micro-batch, for the step records."""
    per_task: dict[str, tuple[float, int]] = {}
    for task, total, count in zip(tasks, nll_sum.detach().tolist(), counts.tolist()):
        old = per_task.get(task, (0.0, 0))
        per_task[task] = (old[0] + total, old[1] + count)
    return per_task


def multitask_loss(
    nll_sum: torch.Tensor,
    counts: torch.Tensor,
    tasks: list[str],
    weights: list[float],
    alpha: float,
    mean_target_tokens: float,
) -> tuple[torch.Tensor, dict[str, tuple[float, int]]]:
    """The token-level multi-task loss of one micro-batch (loss_balance "token", see the module
    docstring), and per task the raw (summed NLL, token count) for reporting."""
    coeffs = torch.tensor(
        [task_coefficient(t, alpha) * w for t, w in zip(tasks, weights)], dtype=nll_sum.dtype, device=nll_sum.device
    )
    return (coeffs * nll_sum).sum() / (len(tasks) * mean_target_tokens), task_totals(nll_sum, counts, tasks)


def step_coefficients(present: set[str], alpha: float) -> dict[str, float]:
    """Coefficient of each task group present in a step ("answer" / "explain"): alpha and 1 - alpha,
    renormalised to sum 1, so a step with one group alone uses that group's mean."""
    raw = {group: task_coefficient(group, alpha) for group in present}
    total = sum(raw.values())
    return {group: value / total for group, value in raw.items()} if total > 0 else {}


def weighted_task_loss(
    nll_sum: torch.Tensor, weights: list[float], coefficient: float, denominator: float
) -> torch.Tensor:
    """One micro-batch's share of coefficient * L_task: coefficient * sum_i w_i * nll_i / denominator, where
    the denominator is sum_i w_i * n_i over the task's samples in the whole step."""
    w = torch.tensor(weights, dtype=nll_sum.dtype, device=nll_sum.device)
    return coefficient * (w * nll_sum).sum() / denominator


def last_token_states(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of each sequence's last real token (right padding), shape [batch, dim]."""
    last = attention_mask.sum(-1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1.0 - F.cosine_similarity(a.float(), b.float(), dim=-1)


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float) -> torch.Tensor:
    """mean(max(0, d(a, p) - d(a, n) + margin)) with d = 1 - cosine: pull the correct rationales
    together and push the student's wrong one away from the teacher's."""
    return F.relu(cosine_distance(anchor, positive) - cosine_distance(anchor, negative) + margin).mean()


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """DPO (Rafailov et al. 2023) on sequence log-likelihoods: -log sigmoid(beta * (chosen margin - rejected margin))."""
    logits = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(logits).mean()
