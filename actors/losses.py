"""Loss terms of the student's training, as plain tensor functions.

Multi-task objective (Li et al. 2022): loss = alpha * L_answer + (1 - alpha) * L_explain. Every
target token carries the coefficient c_i = task_coefficient(task_i, alpha) * weight_i of its sample
(weight = the teacher's loss_weight), and a micro-batch of n samples contributes

    L = sum_i c_i * sum_t nll_it / (n * mean_target_tokens)

where mean_target_tokens is the mean target length (+ EOS) over the whole training set, a constant.
This is a global token-level mean: every target token weighs the same in every batch. Two things
follow. (1) alpha keeps its meaning although batches are grouped by length (answers are short,
explanations long, so most batches hold a single task): a per-batch normalisation (by sum c_i or by
the batch's own token count) would cancel alpha or inflate the short answers' tokens. (2) The first
target token, where the answer and explain tasks part ways, gets the same weight in both tasks; with
per-sample means a 3-token answer would outweigh it tenfold and a small student learns to answer
tersely whatever the task prefix says. Over an epoch the objective is
alpha * (answer tokens) * mean L_answer + (1 - alpha) * (explanation tokens) * mean L_explain,
divided by the total number of target tokens.

Self-reflection (Wang et al. 2023): triplet margin loss on the last-token hidden state with distance
1 - cosine; or, as an alternative, a DPO-style preference loss on sequence log-likelihoods.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ANSWER_TASK = "answer"


def task_coefficient(task: str, alpha: float) -> float:
    """alpha for the answer task; 1 - alpha for every explanation-type task (explain, rationalize, a teacher tag)."""
    return alpha if task == ANSWER_TASK else 1.0 - alpha


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL, number of target tokens) per sequence; labels -100 are ignored, next-token shift inside."""
    shifted = logits[:, :-1, :].float()
    target = labels[:, 1:]
    nll = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), target.reshape(-1),
                          ignore_index=-100, reduction="none").view(target.shape)
    counts = (target != -100).sum(-1)
    return nll.sum(-1), counts


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed log-likelihood of each sequence's target tokens, shape [batch]."""
    total, _ = token_nll(logits, labels)
    return -total


def multitask_loss(nll_sum: torch.Tensor, counts: torch.Tensor, tasks: list[str], weights: list[float],
                   alpha: float, mean_target_tokens: float) -> tuple[torch.Tensor, dict[str, tuple[float, int]]]:
    """Weighted multi-task loss of one micro-batch (see the module docstring), and per task the raw
    (summed NLL, token count) for reporting."""
    coeffs = torch.tensor([task_coefficient(t, alpha) * w for t, w in zip(tasks, weights)],
                          dtype=nll_sum.dtype, device=nll_sum.device)
    per_task: dict[str, tuple[float, int]] = {}
    for task, total, count in zip(tasks, nll_sum.detach().tolist(), counts.tolist()):
        old = per_task.get(task, (0.0, 0))
        per_task[task] = (old[0] + total, old[1] + count)
    return (coeffs * nll_sum).sum() / (len(tasks) * mean_target_tokens), per_task


def last_token_states(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of each sequence's last real token (right padding), shape [batch, dim]."""
    last = attention_mask.sum(-1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1.0 - F.cosine_similarity(a.float(), b.float(), dim=-1)


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float
                 ) -> torch.Tensor:
    """mean(max(0, d(a, p) - d(a, n) + margin)) with d = 1 - cosine: pull the correct rationales
    together and push the student's wrong one away from the teacher's."""
    return F.relu(cosine_distance(anchor, positive) - cosine_distance(anchor, negative) + margin).mean()


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO (Rafailov et al. 2023) on sequence log-likelihoods: -log sigmoid(beta * (chosen margin - rejected margin))."""
    logits = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(logits).mean()
