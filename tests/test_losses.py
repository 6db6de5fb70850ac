"""The training objective as the papers define it: a step's loss recomputed by hand, alpha 0 and 1,
steps that hold both tasks, padding, warm-up, and DPO against the policy the training starts from."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tiny_student import RANDOM_GPT2, RANDOM_LLAMA, pairs_for, problems, samples_for, student_cfg, training_cfg

from tutorloop.actors.models import adapter_from_bytes, load_student
from tutorloop.actors.training import LoraTrainer, warmup_then_decay
from tutorloop.loop.core.student_prompt import student_prompt, student_target


def _token_nll(model, trainer: LoraTrainer, prompt: str, target: str) -> tuple[float, int]:
    """(summed NLL, target tokens) of one sequence alone (no padding), from the model's log-softmax."""
    enc = trainer.encoder.encode(prompt, target)
    with torch.no_grad():
        logprobs = F.log_softmax(model(input_ids=torch.tensor([enc.ids])).logits[0].float(), dim=-1)
    positions = [t for t in range(1, len(enc.ids)) if enc.labels[t] != -100]
    return -sum(logprobs[t - 1, enc.ids[t]].item() for t in positions), len(positions)


def _last_state(model, trainer: LoraTrainer, prompt: str, target: str) -> torch.Tensor:
    enc = trainer.encoder.encode(prompt, target)
    with torch.no_grad():
        return model(input_ids=torch.tensor([enc.ids]), output_hidden_states=True).hidden_states[-1][0, -1]


def _hand_loss(model, trainer: LoraTrainer, samples: list[dict], pairs: list[dict], alpha: float) -> float:
    """alpha * L_answer + (1 - alpha) * L_explain + 0.5 * mean triplet; each L = sum w * nll / sum w * n."""
    sums: dict[str, list[float]] = {}
    for s in samples:
        nll, n = _token_nll(model, trainer, s["input"], s["target"])
        acc = sums.setdefault("answer" if s["task"] == "answer" else "explain", [0.0, 0.0])
        acc[0], acc[1] = acc[0] + s["weight"] * nll, acc[1] + s["weight"] * n
    coefficients = {"answer": alpha, "explain": 1 - alpha}
    present = sum(coefficients[g] for g in sums)
    loss = sum(coefficients[g] / present * total / count for g, (total, count) in sums.items())
    for p in pairs:
        a, pos, neg = (_last_state(model, trainer, p["input"], p[r]) for r in ("anchor", "positive", "negative"))
        d_pos, d_neg = 1 - F.cosine_similarity(a, pos, dim=0), 1 - F.cosine_similarity(a, neg, dim=0)
        loss += 0.5 * max(0.0, (d_pos - d_neg + 1.0).item()) / len(pairs)
    return loss


@pytest.mark.parametrize("answers", [4, 0], ids=["both-tasks", "explain-alone"])
def test_a_steps_loss_is_the_per_task_formula(answers: int) -> None:
    """One step of several micro-batches per task (batch_size 2, grad_accum 8), two teachers' weights,
    a teacher tag and contrast pairs: the recorded loss is the formula computed sample by sample. A
    fresh LoRA starts as the identity, so the base model gives the first step's numbers."""
    cfg = student_cfg(RANDOM_LLAMA)
    examples = problems(6, max_steps=3)
    samples = samples_for(examples[:answers], ("answer",))
    for i, ex in enumerate(examples):
        task = "explain" if i % 2 else "gpt4"  # a teacher's own tag is an explanation task
        samples.append(
            {
                "example_id": ex.id,
                "task": task,
                "input": student_prompt(ex.question, task),
                "target": student_target(task, ex.answer, ex.rationale),
                "weight": 1.0 + i % 2,
            }
        )
    pairs = pairs_for(examples[:3])
    trainer = LoraTrainer(cfg, training_cfg(alpha=0.3, batch_size=2, grad_accum=8, reflection="triplet"))
    result = trainer.train(samples, pairs)
    assert len(result.steps) == 1
    assert result.steps[0]["lr"] == pytest.approx(3e-3)  # warm-up is capped at total steps - 1 = 0
    base, _ = load_student(cfg)
    assert result.steps[0]["loss"] == pytest.approx(_hand_loss(base, trainer, samples, pairs, 0.3), abs=1e-4)
    # The recorded task losses stay the raw per-task token means.
    nll, n = map(
        sum, zip(*(_token_nll(base, trainer, s["input"], s["target"]) for s in samples if s["task"] == "gpt4"))
    )
    assert result.steps[0]["task_losses"]["gpt4"] == pytest.approx(nll / n, abs=1e-4)


def _tensors(adapter: bytes, tmp_path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(adapter_from_bytes(adapter, tmp_path / name) / "adapter_model.safetensors"))


@pytest.mark.parametrize("alpha, kept", [(1.0, "answer"), (0.0, "explain")])
def test_alpha_0_and_1_train_one_task_only(alpha: float, kept: str, tmp_path) -> None:
    """The other task has no influence at all: training on both tasks gives exactly the adapter that
    training on the kept task's samples alone gives."""
    cfg = student_cfg(RANDOM_LLAMA)
    samples = samples_for(problems(16, max_steps=2))
    tcfg = training_cfg(alpha=alpha, batch_size=4)
    both = LoraTrainer(cfg, tcfg, seed=1).train(samples, [])
    alone = LoraTrainer(cfg, tcfg, seed=1).train([s for s in samples if s["task"] == kept], [])
    assert all(set(s["task_losses"]) == {kept} for s in both.steps)
    a, b = _tensors(both.adapter, tmp_path, "both"), _tensors(alone.adapter, tmp_path, "alone")
    assert a.keys() == b.keys() and any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _realistic_mix() -> list[dict]:
    """Short answers, long explanations (1 to 3 steps), and for a third of the questions a second
    explanation from another teacher, as diverse reasoning gives."""
    examples = problems(72, max_steps=3)
    samples = samples_for(examples)
    for ex in examples[::3]:
        samples.append(
            {
                "example_id": ex.id,
                "task": "explain",
                "input": student_prompt(ex.question, "explain"),
                "target": student_target("explain", ex.answer, f"Let me count. {ex.rationale}"),
                "weight": 0.5,
            }
        )
    return samples


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_every_step_holds_both_tasks_with_little_padding(grad_accum: int) -> None:
    samples = _realistic_mix()
    trainer = LoraTrainer(student_cfg(RANDOM_GPT2), training_cfg(batch_size=8, grad_accum=grad_accum))
    result = trainer.train(samples, [])
    assert all(set(s["task_losses"]) == {"answer", "explain"} for s in result.steps)
    assert result.pad_fraction < 0.15, result.pad_fraction
    # Each sample once per epoch; about batch_size * grad_accum samples per step, as before.
    assert sum(s["tokens"] for s in result.steps) == sum(
        len(trainer.encoder.encode(s["input"], s["target"]).ids) for s in samples
    )
    assert len(result.steps) == math.ceil((math.ceil(72 / 8) + math.ceil(96 / 8)) / grad_accum)
    # A short training warms up too (warmup_steps_min 2), from its first step on.
    lrs = [s["lr"] for s in result.steps]
    assert lrs[:3] == pytest.approx([1e-3, 2e-3, 3e-3]) and lrs[3:] == sorted(lrs[3:], reverse=True)


def test_warmup_then_decay() -> None:
    assert [warmup_then_decay(s, 2, 6) for s in range(6)] == pytest.approx([1 / 3, 2 / 3, 1, 0.75, 0.5, 0.25])
    assert [warmup_then_decay(s, 0, 2) for s in range(2)] == pytest.approx([1, 0.5])


def _pair_logprobs(model, trainer: LoraTrainer, pairs: list[dict]) -> torch.Tensor:
    """[pairs, 3] log-likelihoods of anchor, positive and negative, each sequence alone."""
    return torch.tensor(
        [[-_token_nll(model, trainer, p["input"], p[r])[0] for r in ("anchor", "positive", "negative")] for p in pairs]
    )


def test_dpo_reference_is_the_starting_adapter(tmp_path) -> None:
    """With an init adapter (the previous round's), DPO's reference log-likelihoods are that adapter's,
    computed once: the first step's policy equals the reference (loss log 2), and a resume keeps them."""
    cfg = student_cfg(RANDOM_LLAMA)
    examples = problems(12, max_steps=2)
    start = LoraTrainer(cfg, training_cfg(epochs=3, lr=1e-2)).train(samples_for(examples, ("explain",)), []).adapter
    pairs = pairs_for(examples)
    tcfg = training_cfg(epochs=2, reflection="dpo", dpo_beta=0.5, batch_size=4, checkpoint_every=1)

    class Killed(Exception):
        pass

    def kill_at_2(record: dict) -> None:
        if record["step"] == 2:
            raise Killed

    trainer = LoraTrainer(cfg, tcfg)
    with pytest.raises(Killed):
        trainer.train([], pairs, init_adapter=start, checkpoint_dir=str(tmp_path / "ck"), on_step=kill_at_2)
    resumed = trainer.train([], pairs, init_adapter=start, checkpoint_dir=str(tmp_path / "ck"))
    assert resumed.steps[0]["contrast_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert resumed.steps[-1]["contrast_loss"] < math.log(2)
    saved = torch.load(
        tmp_path / "ck" / (tmp_path / "ck" / "latest").read_text() / "trainer_state.pt", weights_only=False
    )
    assert saved["step"] == len(resumed.steps) > 2  # the reference survived a resume from step 2
    with_start, _ = load_student(cfg, adapter=start)
    expected = _pair_logprobs(with_start, trainer, pairs)
    torch.testing.assert_close(saved["reference"], expected, atol=1e-3, rtol=1e-4)
    base, _ = load_student(cfg)
    assert (saved["reference"] - _pair_logprobs(base, trainer, pairs)).abs().max() > 0.1  # not the base model
