#!/bin/bash
# Issue 41's two decisive experiments, one after the other (docs/experiments/decisive-experiments.md), then the
# validation-split tuning of item 4 (configs/experiments/tuning_coin_flip_val_experiment.yaml).
# Rerun after any stop: each experiment skips its finished runs and resumes the cut one.
set -e
cd "$(dirname "$0")/.."
run() { nice -n 5 .venv/bin/tutorloop experiment run "configs/experiments/$1_experiment.yaml" --dir "runs/$2"; }
run decisive_coin_flip decisive-coin-flip
run decisive_multiarith decisive-multiarith
run tuning_coin_flip_val tuning-coin-flip-val
