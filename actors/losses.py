"""Loss terms of the student's training, as plain tensor functions.

Multi-task objective (Li et al. 2022): loss = alpha * L_answer + (1 - alpha) * L_explain. Here every
sample carries its own coefficient c_i = task_coefficient(task_i, alpha) * weight_i (the weight is the
teacher's loss_weight), and a micro-batch of n samples contributes

    L = sum_i c_i * nll_i / n,        nll_i = mean token NLL of sample i's target tokens (+ EOS).

Per-sample means keep a long rationale from outweighing a short answer token for token, so alpha alone
sets the balance between the tasks. Dividing by n (not by sum c_i) keeps alpha meaningful when batches
are grouped by length: answer samples are short and explanations long, so most batches hold one task,
and a per-batch normalisation by sum c_i would cancel alpha. Over an epoch the objective is therefore
alpha * (N_answer / N) * mean L_answer + (1 - alpha) * (N_explain / N) * mean L_explain, which is the
paper's objective (scaled by 1/2) when every question gives one sample of each task.

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


def sequence_mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL over each sequence's target tokens, shape [batch]."""
    total, counts = token_nll(logits, labels)
    return total / counts.clamp(min=1)


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed log-likelihood of each sequence's target tokens, shape [batch]."""
    total, _ = token_nll(logits, labels)
    return -total


def multitask_loss(nll: torch.Tensor, tasks: list[str], weights: list[float], alpha: float
                   ) -> tuple[torch.Tensor, dict[str, list[float]]]:
    """Weighted multi-task loss of one micro-batch (see the module docstring) and the raw per-task NLLs."""
    coeffs = torch.tensor([task_coefficient(t, alpha) * w for t, w in zip(tasks, weights)],
                          dtype=nll.dtype, device=nll.device)
    per_task: dict[str, list[float]] = {}
    for task, value in zip(tasks, nll.detach().tolist()):
        per_task.setdefault(task, []).append(value)
    return (coeffs * nll).sum() / len(tasks), per_task


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
