#!/usr/bin/env bash
# Rebuilds hub_configs/deem-toy from nothing and checks it bit for bit: stage 0 (toy CLIP, SD, LM), the study's
# shipped run alone (seed 0, λ_CSR 5, same settings as the study), shipped into a scratch folder (with the ship
# script's condition alignment, 3,000 steps, about 6 minutes), then compared tensor by tensor with the repository's
# copy. About 70 minutes on 2 CPU cores with nothing else running (run end to
# end on 2026-11-23: identical, 86 min while sharing the machine). Same thread count (2), same library versions as
# the shipped files (pyproject.toml pins them). Exit status 0 only when every weight matches.
# The deem-toy shipped now was made this way on the stage-0 recipe that sees and draws shapes (the scripts' defaults:
# max-pooled CLIP with layer scale 1.0, 8,000 UNet steps): run csr5-seed0 of a study folder built with those
# settings; see docs/TOY_WORLD.md, What ships, for how long this takes and what has been checked to match.
#   ./scripts/reproduce_deem_toy.sh [scratch folder, default outputs/toy-reproduce]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
out=${1:-outputs/toy-reproduce}
.venv/bin/python -m toyworld.study --output-dir "$out" --seeds 0 --lambdas 5
.venv/bin/python -m toyworld.ship --study "$out" --run csr5-seed0 --output "$out/ship"
.venv/bin/python -m toyworld.reproduction "$out/ship" hub_configs/deem-toy
