#!/usr/bin/env bash
# The README's `convsim analyze` example: train a small cnn1 on a Fashion-MNIST subset, then analyse it.
#
#     bash scripts/analyze_example.sh          # about 3 minutes on one core; writes docs/analyze/
#
# The training run goes to runs/analyze-example (not committed; --resume makes a second call reuse
# it); the analysis of its test split (analysis.json, report.md, figures) to docs/analyze (committed).
# One thread and `nice`, so that it can run beside a longer job.
set -euo pipefail
cd "$(dirname "$0")/.."
CONVSIM="${CONVSIM:-.venv/bin/convsim}"
RUN=runs/analyze-example

nice -n 5 "$CONVSIM" train --model cnn1 --dataset fashion-mnist --train-subset 30000 --test-subset 2000 \
    --epochs 6 --lr 0.01 --momentum 0.9 --batch-size 128 --device cpu --threads 1 --seed 0 --resume --out "$RUN"
nice -n 5 "$CONVSIM" analyze --model "$RUN" --data fashion-mnist --out docs/analyze --threads 1 --no-progress
