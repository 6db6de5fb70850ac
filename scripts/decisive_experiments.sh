#!/bin/bash
# Issue 41's two decisive experiments, one after the other (docs/experiments/decisive-experiments.md).
# Rerun after any stop: each experiment skips its finished runs and resumes the cut one.
set -e
cd "$(dirname "$0")/.."
for name in coin_flip multiarith; do
  nice -n 5 .venv/bin/tutorloop experiment run "configs/experiments/decisive_${name}_experiment.yaml" \
    --dir "runs/decisive-${name//_/-}"
done
