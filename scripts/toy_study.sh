#!/usr/bin/env bash
# The whole toy-world CSR study from nothing (docs/TOY_WORLD.md): stage 0, data, benchmarks, λ_CSR 5 vs 0 over
# seeds 0, 1, 2, then the λ ablation (1 and 10, seed 0) in the same folder; the table, plot and verdict go to
# docs/ and the folder. About 2.5 hours on 2 CPU cores; an interrupted run resumes where it stopped.
#   ./scripts/toy_study.sh [study folder, default outputs/toy-study]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
out=${1:-outputs/toy-study}
start=$(date +%s)
.venv/bin/python -m toyworld.study --output-dir "$out" --seeds 0 1 2 --lambdas 5 0
.venv/bin/python -m toyworld.study --output-dir "$out" --seeds 0 --lambdas 1 10 --docs-dir docs
echo "toy study: $(( ($(date +%s) - start) / 60 )) min in all (wall clock, setup included)"
