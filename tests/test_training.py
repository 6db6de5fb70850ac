"""LoRA training: multi-task learning, each loss term, self-reflection, QLoRA, resume, length grouping, export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_student import (
    PRETRAINED_TINY,
    RANDOM_GPT2,
    RANDOM_LLAMA,
    pairs_for,
    problems,
    samples_for,
    student_cfg,
    training_cfg,
)

from tutorloop.actors.exam import Examiner
from tutorloop.actors.losses import multitask_loss, sequence_logprob, task_coefficient, token_nll
from tutorloop.actors.models import adapter_from_bytes, load_student
from tutorloop.actors.training import LoraTrainer, resolve_target_modules, target_logits

STEP_KEYS = {"step", "epoch", "lr", "loss", "task_losses", "contrast_loss", "tokens", "pad_fraction", "elapsed_s"}


def _adapter_tensors(adapter: bytes, tmp_path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(adapter_from_bytes(adapter, tmp_path / name) / "adapter_model.safetensors"))


def _first_last(steps: list[dict], key, n: int = 3) -> tuple[float, float]:
    values = [key(s) for s in steps if key(s) is not None]
    return sum(values[:n]) / n, sum(values[-n:]) / n


@pytest.mark.timeout(1500)  # 4 epochs of 320 samples: about 10 minutes on 2 loaded CPU cores
def test_multitask_training_lowers_loss_and_raises_accuracy() -> None:
    cfg = student_cfg(PRETRAINED_TINY)
    train, test = problems(160), problems(40, split="test")
    examiner = Examiner(cfg, "number")
    untrained = examiner.run(test, "explain")
    before = sum(r["correct"] for r in untrained) / len(test)
    seen = []
    # Four epochs: with per-task means which task's first token comes next must be read from the task
    # prefix; at alpha 0.5 this 2-layer model learned that in 4 epochs (after 2 it still answered with a
    # bare number in explain mode). alpha 0.1, as the shipped configs train (RESULTS.md, the alpha sweep):
    # at 0.5 the student wrote the format on an Intel Xeon but got only 0.25 right (0.4 at 0.1 and 0.3).
    result = LoraTrainer(cfg, training_cfg(epochs=4, alpha=0.1)).train(samples_for(train), [], on_step=seen.append)
    assert seen == result.steps and [s["step"] for s in result.steps] == list(range(1, len(seen) + 1))
    assert all(set(s) == STEP_KEYS for s in result.steps)
    assert result.steps[-1]["epoch"] == 4.0
    assert {t for s in result.steps for t in s["task_losses"]} == {"answer", "explain"}
    first, last = _first_last(result.steps, lambda s: s["loss"])
    assert last < 0.5 * first
    examiner.set_adapter(result.adapter)
    records = examiner.run(test, "explain")
    after = sum(r["correct"] for r in records) / len(test)
    assert after >= before + 0.2, (before, after)

    # Margins (kept from the token-level loss, where they were loosened for an AMD EPYC): explain-mode
    # accuracy at least 0.2 above the untrained model's, the explain format in at least a quarter of the
    # outputs (the untrained model never writes it), bare numbers in at least 80% of answer-mode outputs.
    # Measured with per-task means at alpha 0.5 (one run, an AMD EPYC): 0.075 -> 0.625 accuracy, 40 of 40
    # formatted; at alpha 0.1 on an Intel Xeon: 0.075 -> 0.4, 40 of 40 formatted, 40 of 40 bare answers.
    def formatted(rows: list[dict]) -> int:
        return sum("Therefore, the answer is" in r["output"] for r in rows)

    assert formatted(untrained) == 0
    assert formatted(records) >= 0.25 * len(test), (formatted(records), len(test))
    # The task prefix steers the output: the answer task gives a bare number.
    answers = examiner.run(test, "answer")
    assert sum(r["output"].strip().rstrip(".").isdigit() for r in answers) >= 0.8 * len(test)


@pytest.mark.parametrize("source", [RANDOM_GPT2, RANDOM_LLAMA])
def test_target_logits_give_the_full_forward_loss(source) -> None:
    trainer = LoraTrainer(student_cfg(source), training_cfg())
    model, _ = load_student(student_cfg(source))
    records = samples_for(problems(6))
    encoded = [trainer.encoder.encode(r["input"], r["target"]) for r in records]
    ids, mask, labels, _, _ = trainer.encoder.collate(encoded, torch.device("cpu"))
    logits, kept_labels = target_logits(model, ids, mask, labels)
    assert logits.shape[1] < ids.shape[1]  # the prompt positions were skipped
    with torch.no_grad():
        full = token_nll(model(input_ids=ids, attention_mask=mask).logits, labels)
        part = token_nll(logits, kept_labels)
    assert torch.allclose(full[0], part[0], atol=1e-4) and torch.equal(full[1], part[1])


def test_task_coefficients_follow_alpha() -> None:
    assert task_coefficient("answer", 0.3) == 0.3
    assert task_coefficient("explain", 0.3) == pytest.approx(0.7)
    assert task_coefficient("rationalize", 0.3) == pytest.approx(0.7)
    assert task_coefficient("gpt4", 0.3) == pytest.approx(0.7)  # a teacher's own task tag
    nll_sum, counts = torch.tensor([2.0, 30.0]), torch.tensor([2, 20])
    loss, per_task = multitask_loss(
        nll_sum, counts, ["answer", "explain"], [1.0, 2.0], alpha=0.25, mean_target_tokens=11.0
    )
    assert loss.item() == pytest.approx((0.25 * 1.0 * 2.0 + 0.75 * 2.0 * 30.0) / (2 * 11.0))
    assert per_task == {"answer": (2.0, 2), "explain": (30.0, 20)}


@pytest.mark.parametrize("tasks", [("answer",), ("explain",), ("rationalize",)])
def test_each_task_loss_goes_down(tasks: tuple[str, ...]) -> None:
    result = LoraTrainer(student_cfg(PRETRAINED_TINY), training_cfg(epochs=3)).train(
        samples_for(problems(48), tasks), []
    )
    task = tasks[0]
    first, last = _first_last(result.steps, lambda s: s["task_losses"].get(task), n=2)
    assert last < 0.7 * first, (first, last)
    assert all(s["contrast_loss"] is None for s in result.steps)


def _pair_logprobs(model, tokenizer, pairs: list[dict]) -> list[tuple[float, float]]:
    """(log p(positive | input), log p(negative | input)) per pair under `model`."""
    out = []
    with torch.no_grad():
        for pair in pairs:
            values = []
            for text in (pair["anchor"], pair["negative"]):
                prompt = tokenizer(pair["input"]).input_ids
                ids = prompt + tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
                labels = torch.tensor([[-100] * len(prompt) + ids[len(prompt) :]])
                values.append(sequence_logprob(model(input_ids=torch.tensor([ids])).logits, labels).item())
            out.append(tuple(values))
    return out


def test_triplet_loss_goes_down_and_separates_the_negative() -> None:
    cfg = student_cfg(PRETRAINED_TINY)
    pairs = pairs_for(problems(32))
    result = LoraTrainer(cfg, training_cfg(epochs=12, reflection="triplet", batch_size=8)).train([], pairs)
    assert all(s["task_losses"] == {} for s in result.steps)
    first, last = _first_last(result.steps, lambda s: s["contrast_loss"], n=2)
    assert last < 0.5 * first, (first, last)
    # Loss of the trained model recomputed outside the trainer: anchors now sit closer to positives.
    from tutorloop.actors.losses import last_token_states, triplet_loss

    trainer = LoraTrainer(cfg, training_cfg(reflection="triplet"))
    model, _ = load_student(cfg, adapter=result.adapter)
    base, _ = load_student(cfg)

    def loss_of(m) -> float:
        encoded = [
            tuple(trainer.encoder.encode(p["input"], p[r]) for r in ("anchor", "positive", "negative")) for p in pairs
        ]
        states = []
        with torch.no_grad():
            for role in range(3):
                ids, mask, _, _, _ = trainer.encoder.collate([e[role] for e in encoded], "cpu")
                hidden = m(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
                states.append(last_token_states(hidden, mask))
        return triplet_loss(*states, margin=1.0).item()

    assert loss_of(model) < 0.5 * loss_of(base)


def test_dpo_reflection_raises_the_positive_over_negative_margin() -> None:
    cfg = student_cfg(PRETRAINED_TINY)
    pairs = pairs_for(problems(32))
    held_out = pairs_for(problems(16, seed=5))
    base, tok = load_student(cfg)
    result = LoraTrainer(cfg, training_cfg(epochs=4, reflection="dpo", dpo_beta=0.5)).train([], pairs)
    first, last = _first_last(result.steps, lambda s: s["contrast_loss"], n=2)
    assert last < 0.7 * first, (first, last)
    trained, _ = load_student(cfg, adapter=result.adapter)
    for data in (pairs, held_out):
        before = [p - n for p, n in _pair_logprobs(base, tok, data)]
        after = [p - n for p, n in _pair_logprobs(trained, tok, data)]
        assert sum(after) / len(after) > sum(before) / len(before) + 1.0
        assert sum(a > b for a, b in zip(after, before)) >= 0.8 * len(data)


def test_triplet_term_alongside_samples_raises_the_margin() -> None:
    """Self-reflection as used in tailored rounds: samples plus contrast pairs; the model ends up
    preferring the correct rationale over its own wrong one by more than before."""
    cfg = student_cfg(PRETRAINED_TINY)
    examples = problems(48)
    base, tok = load_student(cfg)
    result = LoraTrainer(cfg, training_cfg(epochs=2, reflection="triplet")).train(
        samples_for(examples, ("explain",)), pairs_for(examples)
    )
    assert any(s["contrast_loss"] is not None for s in result.steps)
    assert any(s["task_losses"] for s in result.steps)
    trained, _ = load_student(cfg, adapter=result.adapter)
    before = [p - n for p, n in _pair_logprobs(base, tok, pairs_for(examples))]
    after = [p - n for p, n in _pair_logprobs(trained, tok, pairs_for(examples))]
    assert sum(after) / len(after) > sum(before) / len(before)


def test_tailored_lr_sets_the_peak_of_a_training_that_continues_an_adapter() -> None:
    cfg = student_cfg(RANDOM_GPT2)
    samples = samples_for(problems(16), ("explain",))
    tcfg = training_cfg(epochs=1, batch_size=4, lr=3e-3, tailored_lr=3e-4)
    first = LoraTrainer(cfg, tcfg).train(samples, [])
    assert max(s["lr"] for s in first.steps) == pytest.approx(3e-3)
    continued = LoraTrainer(cfg, tcfg).train(samples, [], init_adapter=first.adapter)
    assert max(s["lr"] for s in continued.steps) == pytest.approx(3e-4)
    # Left unset, a continued training peaks at the lr as before.
    plain = LoraTrainer(cfg, training_cfg(epochs=1, batch_size=4, lr=3e-3)).train(
        samples, [], init_adapter=first.adapter
    )
    assert max(s["lr"] for s in plain.steps) == pytest.approx(3e-3)


def test_qlora_4bit_trains_on_cpu(tmp_path) -> None:
    cfg = student_cfg(PRETRAINED_TINY, quantization="4bit")
    model, _ = load_student(cfg, for_training=True)
    import bitsandbytes as bnb  # after the load: a full-precision student earlier in this process kept it out

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    examples = problems(32)
    first = LoraTrainer(cfg, training_cfg(epochs=2)).train(samples_for(examples, ("explain",)), [])
    a, b = _first_last(first.steps, lambda s: s["loss"], n=2)
    assert b < 0.7 * a, (a, b)
    weights = _adapter_tensors(first.adapter, tmp_path, "first")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in weights.items())
    # Continuing from that adapter changes it further.
    second = LoraTrainer(cfg, training_cfg(epochs=1)).train(
        samples_for(examples, ("explain",)), [], init_adapter=first.adapter
    )
    again = _adapter_tensors(second.adapter, tmp_path, "second")
    assert again.keys() == weights.keys()
    assert any(not torch.allclose(again[k], weights[k]) for k in weights)
    # The 4-bit student (a fresh load, not the one trained) runs the exam with the adapter.
    examiner = Examiner(cfg, "number")
    examiner.set_adapter(second.adapter)
    assert len(examiner.run(examples[:4], "explain")) == 4


def test_interrupted_training_resumes_to_the_same_weights(tmp_path) -> None:
    cfg = student_cfg(RANDOM_LLAMA, lora={"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]})
    tcfg = training_cfg(
        epochs=1.5, batch_size=4, grad_accum=2, warmup_ratio=0.2, checkpoint_every=2, reflection="triplet"
    )
    examples = problems(24, max_steps=2)
    samples, pairs = samples_for(examples), pairs_for(examples[:8])
    full = LoraTrainer(cfg, tcfg, seed=3).train(samples, pairs)
    assert len(full.steps) > 6

    class Killed(Exception):
        pass

    def kill_at_5(record: dict) -> None:
        if record["step"] == 5:
            raise Killed

    with pytest.raises(Killed):
        LoraTrainer(cfg, tcfg, seed=3).train(samples, pairs, checkpoint_dir=str(tmp_path / "ck"), on_step=kill_at_5)
    assert (tmp_path / "ck" / "latest").read_text() == "step-000004"
    torch.manual_seed(12345)  # the resumed process starts from another RNG state
    plan = []
    resumed = LoraTrainer(cfg, tcfg, seed=3).train(
        samples, pairs, checkpoint_dir=str(tmp_path / "ck"), on_plan=lambda total, done: plan.append((total, done))
    )
    assert plan == [(len(full.steps), 4)]
    a, b = _adapter_tensors(full.adapter, tmp_path, "full"), _adapter_tensors(resumed.adapter, tmp_path, "resumed")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
    assert [s["loss"] for s in resumed.steps] == pytest.approx([s["loss"] for s in full.steps], rel=1e-4)
    # Another (round's) seed: another data order and initialisation, so the checkpoint is not reused.
    LoraTrainer(cfg, tcfg, seed=3).train(
        samples,
        pairs,
        checkpoint_dir=str(tmp_path / "ck"),
        seed=4,
        on_plan=lambda total, done: plan.append((total, done)),
    )
    assert plan[-1] == (len(full.steps), 0)
    # Other data: the checkpoint is not reused.
    other = LoraTrainer(cfg, tcfg, seed=3).train(
        samples[:-2], pairs, checkpoint_dir=str(tmp_path / "ck"), on_plan=lambda total, done: plan.append((total, done))
    )
    assert plan[-1][1] == 0 and len(other.steps) == plan[-1][0]


def test_gradient_checkpointing_trains_to_the_same_weights(tmp_path) -> None:
    cfg = student_cfg(RANDOM_LLAMA, lora={"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": "all-linear"})
    examples = problems(16, max_steps=2)
    samples, pairs = samples_for(examples), pairs_for(examples[:8])
    plain = LoraTrainer(cfg, training_cfg(epochs=1, batch_size=4, reflection="triplet"), seed=3)
    recomputed = LoraTrainer(
        cfg, training_cfg(epochs=1, batch_size=4, reflection="triplet", gradient_checkpointing=True), seed=3
    )
    assert recomputed._build_model(None).is_activation_checkpointing
    a = _adapter_tensors(plain.train(samples, pairs).adapter, tmp_path, "plain")
    b = _adapter_tensors(recomputed.train(samples, pairs).adapter, tmp_path, "recomputed")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)


def test_length_grouping_keeps_padding_low() -> None:
    examples = problems(64, max_steps=3)
    samples = samples_for(examples, ("answer", "explain", "rationalize"))
    trainer = LoraTrainer(student_cfg(RANDOM_GPT2), training_cfg(batch_size=8, epochs=1))
    result = trainer.train(samples, [])
    assert result.pad_fraction < 0.15
    assert all(s["pad_fraction"] < 0.25 for s in result.steps)
    assert sum(s["tokens"] for s in result.steps) == sum(
        len(trainer.encoder.encode(s["input"], s["target"]).ids) for s in samples
    )


def test_target_modules_are_translated_between_architectures() -> None:
    gpt2, _ = load_student(student_cfg(RANDOM_GPT2))
    llama, _ = load_student(student_cfg(RANDOM_LLAMA))
    assert resolve_target_modules(gpt2, ["q_proj", "v_proj"]) == ["c_attn"]
    assert resolve_target_modules(gpt2, ["c_attn", "c_fc"]) == ["c_attn", "c_fc"]
    assert resolve_target_modules(llama, ["c_attn"]) == ["q_proj", "k_proj", "v_proj"]
    assert resolve_target_modules(llama, "all-linear") == "all-linear"
    with pytest.raises(ValueError, match="target_modules"):
        resolve_target_modules(llama, ["nothing_here"])
    # gpt2 with the default llama-style targets trains (LoRA lands on c_attn).
    cfg = student_cfg(RANDOM_GPT2, lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    result = LoraTrainer(cfg, training_cfg(epochs=0.5)).train(samples_for(problems(8)), [])
    assert result.steps


def test_bad_samples_are_rejected() -> None:
    trainer = LoraTrainer(student_cfg(RANDOM_GPT2), training_cfg())
    with pytest.raises(ValueError, match=r"samples\[0\].*target"):
        trainer.train([{"example_id": "x", "task": "answer", "input": "q", "weight": 1.0}], [])
    with pytest.raises(ValueError, match="no samples"):
        trainer.train([], [])


@pytest.mark.parametrize("tiny", [RANDOM_GPT2, PRETRAINED_TINY], ids=["gpt2", "llama"])
def test_merged_export_reloads_and_generates_the_same_text(tiny: dict, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tutorloop.actors.exam import DecodeSettings, decode_batch
    from tutorloop.actors.export import merge_adapter
    from tutorloop.loop.core.student_prompt import student_prompt

    cfg = student_cfg(tiny)
    examples = problems(12)
    adapter = LoraTrainer(cfg, training_cfg(epochs=1)).train(samples_for(examples, ("explain",)), []).adapter
    out = merge_adapter(cfg, adapter, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with_adapter, tok2 = load_student(cfg, adapter=adapter)
    settings = DecodeSettings(max_new_tokens=30, stop=["\n\n"])
    prompts = [tok(student_prompt(ex.question, "explain")).input_ids for ex in examples]
    assert prompts == [tok2(student_prompt(ex.question, "explain")).input_ids for ex in examples]
    assert decode_batch(merged, tok, prompts, settings) == decode_batch(with_adapter, tok2, prompts, settings)


BNB_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from tiny_student import RANDOM_LLAMA, problems, samples_for, student_cfg, training_cfg
from tutorloop.actors.exam import Examiner
from tutorloop.actors.models import load_student
from tutorloop.actors.training import LoraTrainer

cfg = student_cfg(RANDOM_LLAMA)
adapter = LoraTrainer(cfg, training_cfg(epochs=0.5)).train(samples_for(problems(8)), []).adapter
examiner = Examiner(cfg, "number")
examiner.set_adapter(adapter)
examiner.run(problems(2, split="test"), "explain")
# Loaded modules only: a None entry is how the student loader keeps bitsandbytes out (see allow_bitsandbytes).
out = {"full_precision": sorted(m for m, mod in sys.modules.items() if m.split(".")[0] == "bitsandbytes" and mod)}
model, _ = load_student(student_cfg(RANDOM_LLAMA, quantization="4bit"))
import bitsandbytes as bnb
out["4bit"] = any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
print(json.dumps(out))
"""


def test_bitsandbytes_is_imported_only_for_a_quantized_student() -> None:
    """A full-precision training and exam (with an adapter, so peft is loaded) leave bitsandbytes out of
    the process (its import costs every model actor's boot seconds); a 4-bit student later in it gets it."""
    done = subprocess.run(
        [sys.executable, "-c", BNB_PROBE, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"full_precision": [], "4bit": True}
