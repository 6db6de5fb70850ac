#!/usr/bin/env bash
# The runs behind RESULTS.md, one after another on this machine (CPU); safe to re-run: a finished run
# is skipped, a killed one is resumed, so a long session can be continued later.
#   scripts/reproduce_results.sh [STEP ...]   (default: all steps, in the order below)
# Steps: demo (what `make demo` runs), coin-explain-only (its round 0 on explanations only),
#        coin-explain-only-tailored (two tailored rounds after it), demo-alpha (round 0 with alpha 0.1),
#        coin-main (configs/demo.yaml on the whole pool, 128 examined and up to 64 taught per round),
#        coin-random coin-noreflect coin-answer ma-answer ma-main ma-random ma-noreflect
#        tracking-main tracking-random tracking-noreflect tracking-answer
#        exact-0 ... exact-4 (issue 16: the synthetic task with the exact program teacher, seed 0-4:
#        tailored, random selection at the same teacher budget, no self-reflection, mistakes taught in
#        random order instead of hardest first, two corrections per mistake with and without
#        self-reflection), exact-compare
#        (their paired tests into $RUNS/exact-compare.md),
#        onestep-0 ... onestep-19 (issue 16: the same on one-step problems, alpha 0.1, the exam at temperature
#        0.5: tailored against random selection), onestep-compare (into $RUNS/onestep-compare.md),
#        onestep-tlr-0 ... onestep-tlr-19 and onestep-tlr-compare (the same two arms with training.tailored_lr
#        1e-4, a tenth of round 0's lr), reworded-1 ... reworded-20 (issue 16: one-step problems, a greedy exam,
#        a test that asks the pool's problems in new words; tailored and random, each at lr 1e-3 and at
#        training.tailored_lr 1e-4; pre-registered in RESULTS.md, seed 0 was the pilot), reworded-compare
#        (into $RUNS/reworded-compare.md), reworded-r2-21 ... reworded-r2-40 (the same test, round 2 from a shared
#        tailored round 1 at training.tailored_lr 1e-4: tailored against random; pre-registered), reworded-r2-compare
#        (into $RUNS/reworded-r2-compare.md), reworded-r2-41 ... reworded-r2-60 and reworded-r2-replication (its
#        pre-registered replication on fresh seeds, into $RUNS/reworded-r2-replication.md), reworded-bal-61 ...
#        reworded-bal-90 and reworded-bal-compare (round 2 with training.mistake_balance: category in both arms,
#        pre-registered, into $RUNS/reworded-bal-compare.md), alpha-0.5 alpha-0.1 alpha-0.9 (issue 13: coin_flip
#        round 0 at three alphas, one baseline), alpha-compare (their paired tests into $RUNS/alpha-compare.md)
#        live-ma-0 live-ma-1 live-ma-2, live-coin-0 live-coin-1 live-coin-2 (issue 16: round 0 from the recorded
#        rationales, a tailored round from the live Qwen teacher against as many random questions taught by it,
#        and on coin_flip a third arm whose mistakes take each gold answer in turn (training.mistake_balance)
#        a fourth, the third without self-reflection, and a control that retrains on random questions
#        with the recorded davinci rationales instead of Qwen's, that control at a tenth of the lr, and
#        tailored and random at a tenth of the lr;
#        seed 0/1/2, about 75 minutes a seed), live-compare (their paired tests into $RUNS/live-compare-ma.md
#        and -coin.md, each for the seeds that have runs),
#        live-coin-rep-4 live-coin-rep-5 live-coin-rep-6 (the pre-registered replication on fresh seeds of
#        coin_flip tailored against random at lr 1e-4: round 0 only, then the two arms; about 42 minutes a seed),
#        live-coin-rep-compare (their paired tests into $RUNS/live-compare-coin-replication.md),
#        live-ma-e3-0 (MultiArith: round 0 for three epochs, as Fine-tune-CoT trains for many, then tailored and
#        random rounds of one epoch at lr 1e-4 from the live teacher; about 80 minutes), live-ma-e8-0 (the same
#        with round 0 for eight epochs; about 90 minutes alone), live-ma-big-0 (round 0 as live-ma-e3-0, then
#        one large tailored round, the whole pool examined and 96 mistakes taught, against 96 random questions;
#        about 100 minutes alone), live-ma-pool-0 (round 0 as live-ma-e3-0, then one tailored round that teaches
#        every mistake of the whole pool, one Qwen correction each; no random arm; about 90 minutes alone),
#        live-ma-pool2-0 (live-ma-pool-0, then a second round of the same kind from its round 1, evaluated again
#        with the calculator into $RUNS/live-calc-live-ma-pool2-s0.md; about 80 minutes after live-ma-pool-0),
#        live-ma-calc-0 (round 0 as live-ma-e3-0, then the 96-mistake round with the decoding calculator in its
#        exam and eval, student.generation.calculator; then every round of live-ma-big-s0, live-ma-pool-s0 and
#        live-ma-big-calc-s0 evaluated again with the calculator, into $RUNS/live-calc-*.md; about 60 minutes
#        alone after round 0)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$(pwd)/.venv/bin:$PATH"
RUNS=${RUNS:-runs}
# Tailored rounds of the ablation forks; more later with: tutorloop resume runs/NAME --set run.rounds=2
ABLATION_ROUNDS=${ABLATION_ROUNDS:-1}

finished() { [ -f "$RUNS/$1/history.duckdb" ] && tutorloop sql "$RUNS/$1" --format csv \
    "SELECT status FROM runs" 2>/dev/null | grep -q finished; }

run() {  # run NAME CONFIG [--set ...]: start, or resume what an earlier call left unfinished
    local name=$1 config=$2; shift 2
    if finished "$name"; then echo "== $name: finished earlier"; return; fi
    echo "== $name: tutorloop run $config --set run.name=$name $*"
    if [ -f "$RUNS/$name/history.duckdb" ]; then
        tutorloop run "$config" --set run.name="$name" --set run.run_dir="$RUNS" "$@" --resume
    else
        tutorloop run "$config" --set run.name="$name" --set run.run_dir="$RUNS" "$@" --overwrite
    fi
}

fork() {  # fork NAME PARENT [--set ...]: the parent's baseline and round 0, then its own tailored rounds
    fork_after 0 "$@"
}

fork_after() {  # fork_after ROUND NAME PARENT [--set ...]: the parent's rounds up to ROUND, then its own
    local after=$1 name=$2 parent=$3; shift 3
    if finished "$name"; then echo "== $name: finished earlier"; return; fi
    echo "== $name: tutorloop fork $RUNS/$parent --after-round $after --name $name $*"
    if [ -f "$RUNS/$name/history.duckdb" ]; then
        tutorloop resume "$RUNS/$name"
    else
        tutorloop fork "$RUNS/$parent" --after-round "$after" --name "$name" "$@"
    fi
}

ma_round0() {  # ma_round0 SEED EPOCHS: MultiArith round 0 from the recorded rationales, shared by its arms
    run "live-ma-e$2-core-s$1" "$LIVE" --set data.task=multiarith --set run.seed="$1" \
        --set run.rounds=0 --set run.baseline=false --set training.epochs="$2"
}

# The coin_flip runs use all 350 train questions; the shipped demo draws 300 of them to stay under 25 minutes.
COIN_WHOLE_POOL=(--set data.pool_size=350)
# MultiArith's large tailored round: the whole pool examined, 96 questions taught (192 Qwen calls), one epoch at
# round 0's lr; the student is idle while the teacher writes, so the teacher gets both cores and four slots.
BIG_ROUND=(--set run.rounds=1 --set training.epochs=1 --set training.lr=1e-3 --set training.exam_size=415
           --set training.max_mistakes=96 --set teacher.concurrency=4 --set teacher.teachers.1.serve.parallel=4
           --set teacher.teachers.1.serve.ctx=8192 --set teacher.teachers.1.serve.llama_cpp.threads=2)
# MultiArith's whole-pool tailored round: every question with a mistake in the exam is corrected once (about 390
# Qwen calls), one contrast pair each to bound the training's time.
POOL_ROUND=("${BIG_ROUND[@]}" --set training.max_mistakes=415 --set teacher.tailored_samples=1
            --set training.max_pairs_per_question=1)
ANSWER_ONLY=(--set "training.tasks=[answer]" --set "student.eval_modes=[answer]" --set run.rounds=0)
EXACT=configs/experiments/exact_tailoring.yaml
ONESTEP=configs/experiments/exact_tailoring_one_step.yaml
ONESTEP_SEEDS=(${ONESTEP_SEEDS:-$(seq -s ' ' 0 19)})
REWORDED=configs/experiments/exact_tailoring_reworded.yaml
REWORDED_SEEDS=(${REWORDED_SEEDS:-$(seq -s ' ' 1 20)})
SEEDS=(${SEEDS:-0 1 2 3 4})  # the seeds the compare steps pair (those with a run directory)
ALPHA=configs/experiments/alpha_sweep.yaml
LIVE=configs/experiments/live_teacher.yaml
# The control arm's teacher: the recorded davinci rationales in every round, no live teacher
REPLAY_ONLY='teacher.teachers=[{name: davinci-002, backend: replay, model: text-davinci-002}]'

exact_seed() {  # exact_seed SEED: the tailored run, then the two ablations forked after its round 0
    run "exact-s$1" "$EXACT" --set run.seed="$1"
    fork "exact-random-s$1" "exact-s$1" --set training.selection=random
    fork "exact-noreflect-s$1" "exact-s$1" --set training.reflection=none
    fork "exact-anyorder-s$1" "exact-s$1" --set training.mistake_order=random
    fork "exact-twosamples-s$1" "exact-s$1" --set teacher.tailored_samples=2
    fork "exact-twosamples-noreflect-s$1" "exact-s$1" --set teacher.tailored_samples=2 --set training.reflection=none
}

live_seed() {  # live_seed TASK PREFIX SEED: the tailored run, then the random arm forked after its round 0
    run "$2-s$3" "$LIVE" --set data.task="$1" --set run.seed="$3"
    fork "$2-random-s$3" "$2-s$3" --set training.selection=random
}

seed_arm() {  # seed_arm ARM PREFIX: ARM=RUNS/PREFIX-s0,RUNS/PREFIX-s1,... for compare --group
    local dirs=() seed
    for seed in "${SEEDS[@]}"; do [ ! -d "$RUNS/$2-s$seed" ] || dirs+=("$RUNS/$2-s$seed"); done
    (IFS=,; echo "$1=${dirs[*]}")
}

reworded_seed() {  # reworded_seed SEED: the tailored run, then three forks after its round 0
    run "reworded-s$1" "$REWORDED" --set run.seed="$1"
    fork "reworded-random-s$1" "reworded-s$1" --set training.selection=random
    fork "reworded-tlr-s$1" "reworded-s$1" --set training.tailored_lr=1e-4
    fork "reworded-random-tlr-s$1" "reworded-s$1" --set training.selection=random --set training.tailored_lr=1e-4
}

reworded_r2_seed() {  # reworded_r2_seed SEED: round 0 and a tailored round 1, then round 2 tailored or random
    run "reworded-r1-s$1" "$REWORDED" --set run.seed="$1" --set run.rounds=1
    fork_after 1 "reworded-r2-s$1" "reworded-r1-s$1" --set run.rounds=2 --set training.tailored_lr=1e-4
    fork_after 1 "reworded-r2-random-s$1" "reworded-r1-s$1" --set run.rounds=2 --set training.tailored_lr=1e-4 \
        --set training.selection=random
}

reworded_bal_seed() {  # reworded_bal_seed SEED: reworded_r2_seed's round 1, then round 2 category-balanced or random
    run "reworded-r1-s$1" "$REWORDED" --set run.seed="$1" --set run.rounds=1
    local arm
    for arm in reworded-bal reworded-bal-random; do
        fork_after 1 "$arm-s$1" "reworded-r1-s$1" --set run.rounds=2 --set training.tailored_lr=1e-4 \
            --set training.mistake_balance=category \
            $([ "$arm" = reworded-bal-random ] && echo --set training.selection=random)
    done
}

reworded_by_taught() {  # reworded_by_taught TAILORED_PREFIX RANDOM_PREFIX: scripts/reworded_by_taught.sql over SEEDS
    local seed dirs=()
    for seed in "${SEEDS[@]}"; do dirs+=("$RUNS/$1-s$seed" "$RUNS/$2-s$seed"); done
    echo; echo "## Test questions by whether the tailored round taught their problem ($1, scripts/reworded_by_taught.sql)"
    tutorloop sql "${dirs[@]}" -f scripts/reworded_by_taught.sql --format markdown
}

reworded_r2_compare() {  # reworded_r2_compare PREFIX OUT SEED...: round 2 tailored against random, into $RUNS/OUT.md
    local prefix=$1 out=$2; shift 2
    SEEDS=("$@")
    tutorloop compare --group "$(seed_arm tailored "$prefix")" --group "$(seed_arm random "$prefix-random")" \
        --format markdown --out "$RUNS/$out.md"
    reworded_by_taught "$prefix" "$prefix-random" >> "$RUNS/$out.md"
    echo "== $out: wrote $RUNS/$out.md"
}

reworded_compare() {  # the pre-registered tests: tailored against random at each lr, by seed and by question
    SEEDS=("${REWORDED_SEEDS[@]}")
    tutorloop compare --group "$(seed_arm tailored reworded)" --group "$(seed_arm random reworded-random)" \
        --group "$(seed_arm tailored-lr1e-4 reworded-tlr)" --group "$(seed_arm random-lr1e-4 reworded-random-tlr)" \
        --format markdown --out "$RUNS/reworded-compare.md"
    { reworded_by_taught reworded reworded-random; reworded_by_taught reworded-tlr reworded-random-tlr; } \
        >> "$RUNS/reworded-compare.md"
    echo "== reworded-compare: wrote $RUNS/reworded-compare.md"
}

onestep_compare() {  # onestep_compare TAILORED_PREFIX RANDOM_PREFIX OUT: paired tests, by chain, by what was taught
    SEEDS=("${ONESTEP_SEEDS[@]}")
    tutorloop compare --group "$(seed_arm tailored "$1")" --group "$(seed_arm random "$2")" \
        --format markdown --out "$RUNS/$3.md"
    { echo; echo "## By problem (scripts/exact_by_chain.sql)"
      tutorloop sql "$RUNS/$1"-s* "$RUNS/$2"-s* -f scripts/exact_by_chain.sql --format markdown
      echo; echo "## Where selection gains and loses, on the pool (scripts/exact_by_taught.sql)"
      tutorloop sql "$RUNS/$1"-s* "$RUNS/$2"-s* -f scripts/exact_by_taught.sql --format markdown; } >> "$RUNS/$3.md"
    echo "== $3: wrote $RUNS/$3.md"
}

step() {
    case $1 in
        coin-main) run coin-main configs/demo.yaml "${COIN_WHOLE_POOL[@]}" --set training.exam_size=128 \
                       --set training.max_mistakes=64 ;;
        coin-random) fork coin-random coin-main --set training.selection=random --set run.rounds="$ABLATION_ROUNDS" ;;
        coin-noreflect) fork coin-noreflect coin-main --set training.reflection=none --set run.rounds="$ABLATION_ROUNDS" ;;
        demo) run demo configs/demo.yaml ;;
        coin-explain-only) fork_after -1 coin-explain-only demo --set "training.tasks=[explain]" --set run.rounds=0 ;;
        coin-explain-only-tailored) fork coin-explain-only-tailored coin-explain-only --set run.rounds=2 ;;
        demo-alpha) run demo-alpha configs/demo.yaml --set training.alpha=0.1 --set run.rounds=0 ;;
        coin-answer) run coin-answer configs/demo.yaml "${COIN_WHOLE_POOL[@]}" "${ANSWER_ONLY[@]}" ;;
        ma-answer) run ma-answer configs/multiarith_cpu.yaml "${ANSWER_ONLY[@]}" ;;
        ma-main) run ma-main configs/multiarith_cpu.yaml ;;
        ma-random) fork ma-random ma-main --set training.selection=random --set run.rounds="$ABLATION_ROUNDS" ;;
        ma-noreflect) fork ma-noreflect ma-main --set training.reflection=none --set run.rounds="$ABLATION_ROUNDS" ;;
        tracking-main) run tracking-main configs/tracking_cpu.yaml ;;
        tracking-random) fork tracking-random tracking-main --set training.selection=random --set run.rounds="$ABLATION_ROUNDS" ;;
        tracking-noreflect) fork tracking-noreflect tracking-main --set training.reflection=none --set run.rounds="$ABLATION_ROUNDS" ;;
        tracking-answer) run tracking-answer configs/tracking_cpu.yaml "${ANSWER_ONLY[@]}" ;;
        exact-[0-9]) exact_seed "${1#exact-}" ;;
        onestep-[0-9]|onestep-[0-9][0-9]) run "onestep-s${1#onestep-}" "$ONESTEP" --set run.seed="${1#onestep-}"
                       fork "onestep-random-s${1#onestep-}" "onestep-s${1#onestep-}" --set training.selection=random ;;
        onestep-tlr-[0-9]|onestep-tlr-[0-9][0-9]) seed=${1#onestep-tlr-}
                       run "onestep-tlr-s$seed" "$ONESTEP" --set run.seed="$seed" --set training.tailored_lr=1e-4
                       fork "onestep-random-tlr-s$seed" "onestep-tlr-s$seed" --set training.selection=random ;;
        onestep-compare) onestep_compare onestep onestep-random onestep-compare ;;
        reworded-[0-9]|reworded-[0-9][0-9]) reworded_seed "${1#reworded-}" ;;
        reworded-compare) reworded_compare ;;
        reworded-r2-[0-9]|reworded-r2-[0-9][0-9]) reworded_r2_seed "${1#reworded-r2-}" ;;
        reworded-r2-compare) reworded_r2_compare reworded-r2 reworded-r2-compare $(seq 21 40) ;;
        reworded-r2-replication) reworded_r2_compare reworded-r2 reworded-r2-replication $(seq 41 60) ;;
        reworded-bal-[0-9]|reworded-bal-[0-9][0-9]) reworded_bal_seed "${1#reworded-bal-}" ;;
        reworded-bal-compare) reworded_r2_compare reworded-bal reworded-bal-compare $(seq 61 90) ;;
        onestep-tlr-compare) onestep_compare onestep-tlr onestep-random-tlr onestep-tlr-compare ;;
        exact-compare) tutorloop compare --group "$(seed_arm tailored exact)" --group "$(seed_arm random exact-random)" \
                           --group "$(seed_arm noreflect exact-noreflect)" --group "$(seed_arm anyorder exact-anyorder)" \
                           --group "$(seed_arm twosamples exact-twosamples)" \
                           --group "$(seed_arm twosamples-noreflect exact-twosamples-noreflect)" \
                           --format markdown --out "$RUNS/exact-compare.md"
                       echo "== exact-compare: wrote $RUNS/exact-compare.md" ;;
        live-ma-[0-9]) live_seed multiarith live-ma "${1#live-ma-}" ;;
        live-coin-[0-9]) live_seed coin_flip live-coin "${1#live-coin-}"
                         fork "live-coin-balanced-s${1#live-coin-}" "live-coin-s${1#live-coin-}" \
                             --set training.mistake_balance=answer
                         fork "live-coin-balanced-noreflect-s${1#live-coin-}" "live-coin-s${1#live-coin-}" \
                             --set training.mistake_balance=answer --set training.reflection=none
                         fork "live-coin-replay-random-s${1#live-coin-}" "live-coin-s${1#live-coin-}" \
                             --set training.selection=random --set "$REPLAY_ONLY"
                         fork "live-coin-replay-random-lr1e-4-s${1#live-coin-}" "live-coin-s${1#live-coin-}" \
                             --set training.selection=random --set "$REPLAY_ONLY" --set training.lr=1e-4
                         fork "live-coin-lr1e-4-s${1#live-coin-}" "live-coin-s${1#live-coin-}" --set training.lr=1e-4
                         fork "live-coin-random-lr1e-4-s${1#live-coin-}" "live-coin-s${1#live-coin-}" \
                             --set training.selection=random --set training.lr=1e-4 ;;
        live-coin-rep-[0-9]) seed=${1#live-coin-rep-}  # the pre-registered replication: round 0 only, then the two lr 1e-4 arms
                             run "live-coin-core-s$seed" "$LIVE" --set data.task=coin_flip --set run.seed="$seed" \
                                 --set run.rounds=0
                             fork "live-coin-lr1e-4-s$seed" "live-coin-core-s$seed" --set run.rounds=1 \
                                 --set training.lr=1e-4
                             fork "live-coin-random-lr1e-4-s$seed" "live-coin-core-s$seed" --set run.rounds=1 \
                                 --set training.selection=random --set training.lr=1e-4 ;;
        live-ma-e[0-9]-[0-9]) spec=${1#live-ma-e}; epochs=${spec%%-*}; seed=${spec#*-}; e="e$epochs"
                          ma_round0 "$seed" "$epochs"
                          fork "live-ma-$e-s$seed" "live-ma-$e-core-s$seed" --set run.rounds=1 --set training.epochs=1 \
                              --set training.lr=1e-4
                          fork "live-ma-$e-random-s$seed" "live-ma-$e-core-s$seed" --set run.rounds=1 \
                              --set training.epochs=1 --set training.lr=1e-4 --set training.selection=random
                          tutorloop compare "$RUNS/live-ma-$e-s$seed" "$RUNS/live-ma-$e-random-s$seed" --format markdown \
                              --out "$RUNS/live-compare-ma-$e-s$seed.md" ;;
        live-ma-big-[0-9]) seed=${1#live-ma-big-}
                          ma_round0 "$seed" 3
                          fork "live-ma-big-s$seed" "live-ma-e3-core-s$seed" "${BIG_ROUND[@]}"
                          fork "live-ma-big-random-s$seed" "live-ma-e3-core-s$seed" "${BIG_ROUND[@]}" \
                              --set training.selection=random
                          tutorloop compare "$RUNS/live-ma-big-s$seed" "$RUNS/live-ma-big-random-s$seed" --format markdown \
                              --out "$RUNS/live-compare-ma-big-s$seed.md" ;;
        live-ma-pool-[0-9]) seed=${1#live-ma-pool-}
                          ma_round0 "$seed" 3
                          fork "live-ma-pool-s$seed" "live-ma-e3-core-s$seed" "${POOL_ROUND[@]}" ;;
        live-ma-pool2-[0-9]) seed=${1#live-ma-pool2-}
                          ma_round0 "$seed" 3
                          fork "live-ma-pool-s$seed" "live-ma-e3-core-s$seed" "${POOL_ROUND[@]}"
                          fork_after 1 "live-ma-pool2-s$seed" "live-ma-pool-s$seed" --set run.rounds=2
                          python scripts/eval_calculator.py --run "$RUNS/live-ma-pool2-s$seed" \
                              > "$RUNS/live-calc-live-ma-pool2-s$seed.md"
                          echo "== live-ma-pool2-s$seed with the calculator: wrote $RUNS/live-calc-live-ma-pool2-s$seed.md" ;;
        live-ma-calc-[0-9]) seed=${1#live-ma-calc-}
                          ma_round0 "$seed" 3
                          fork "live-ma-big-calc-s$seed" "live-ma-e3-core-s$seed" "${BIG_ROUND[@]}" \
                              --set student.generation.calculator=true
                          for name in live-ma-big-s$seed live-ma-pool-s$seed live-ma-big-calc-s$seed; do
                              [ -d "$RUNS/$name" ] || continue
                              python scripts/eval_calculator.py --run "$RUNS/$name" > "$RUNS/live-calc-$name.md"
                              echo "== $name with the calculator: wrote $RUNS/live-calc-$name.md"
                          done ;;
        live-coin-rep-compare) SEEDS=(${SEEDS_REP:-4 5 6})
                               tutorloop compare --group "$(seed_arm tailored-lr1e-4 live-coin-lr1e-4)" \
                                   --group "$(seed_arm random-lr1e-4 live-coin-random-lr1e-4)" \
                                   --format markdown --out "$RUNS/live-compare-coin-replication.md"
                               echo "== live-coin-rep-compare: wrote $RUNS/live-compare-coin-replication.md" ;;
        live-compare) if [ -d "$RUNS/live-ma-random-s${SEEDS[0]}" ]; then
                          tutorloop compare --group "$(seed_arm tailored-ma live-ma)" \
                              --group "$(seed_arm random-ma live-ma-random)" \
                              --format markdown --out "$RUNS/live-compare-ma.md"
                          echo "== live-compare: wrote $RUNS/live-compare-ma.md"; fi
                      if [ -d "$RUNS/live-coin-replay-random-s${SEEDS[0]}" ]; then
                          tutorloop compare --group "$(seed_arm tailored-coin live-coin)" \
                              --group "$(seed_arm random-coin live-coin-random)" \
                              --group "$(seed_arm balanced-coin live-coin-balanced)" \
                              --group "$(seed_arm balanced-noreflect-coin live-coin-balanced-noreflect)" \
                              --group "$(seed_arm replay-random-coin live-coin-replay-random)" \
                              --group "$(seed_arm replay-random-lr1e-4-coin live-coin-replay-random-lr1e-4)" \
                              --group "$(seed_arm tailored-lr1e-4-coin live-coin-lr1e-4)" \
                              --group "$(seed_arm random-lr1e-4-coin live-coin-random-lr1e-4)" \
                              --format markdown --out "$RUNS/live-compare-coin.md"
                          echo "== live-compare: wrote $RUNS/live-compare-coin.md"; fi ;;
        alpha-0.5) run alpha-0.5 "$ALPHA" ;;
        alpha-0.[0-9]) fork_after -1 "$1" alpha-0.5 --set training.alpha="${1#alpha-}" ;;
        alpha-compare) tutorloop compare "$RUNS/alpha-0.1" "$RUNS/alpha-0.5" "$RUNS/alpha-0.9" --format markdown \
                           --out "$RUNS/alpha-compare.md"
                       echo "== alpha-compare: wrote $RUNS/alpha-compare.md" ;;
        *) echo "unknown step: $1" >&2; exit 2 ;;
    esac
}

STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(demo coin-explain-only coin-explain-only-tailored demo-alpha
                                  coin-main coin-random coin-noreflect coin-answer ma-answer ma-main ma-random ma-noreflect
                                  tracking-main tracking-random tracking-noreflect tracking-answer
                                  exact-0 exact-1 exact-2 exact-3 exact-4 exact-compare
                                  $(printf 'onestep-%s ' "${ONESTEP_SEEDS[@]}") onestep-compare
                                  $(printf 'onestep-tlr-%s ' "${ONESTEP_SEEDS[@]}") onestep-tlr-compare
                                  $(printf 'reworded-%s ' "${REWORDED_SEEDS[@]}") reworded-compare
                                  $(printf 'reworded-r2-%s ' $(seq 21 40)) reworded-r2-compare
                                  $(printf 'reworded-r2-%s ' $(seq 41 60)) reworded-r2-replication
                                  alpha-0.5 alpha-0.1 alpha-0.9 alpha-compare
                                  live-ma-0 live-ma-1 live-ma-2 live-coin-0 live-coin-1 live-coin-2 live-compare
                                  live-coin-rep-4 live-coin-rep-5 live-coin-rep-6 live-coin-rep-compare live-ma-e3-0 live-ma-e8-0)
for s in "${STEPS[@]}"; do
    start=$(date +%s)
    step "$s"
    echo "== $s: $(( $(date +%s) - start )) s"
done
