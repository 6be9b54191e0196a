#!/usr/bin/env bash
# Rebuilds hub_configs/deem-toy from nothing and checks it bit for bit: stage 0 (toy CLIP, SD, LM), the study's
# shipped run alone (seed 0, λ_CSR 5, same settings as the study), shipped into a scratch folder (with the ship
# script's condition alignment, 3,000 steps), then compared tensor by tensor with the repository's copy. Same thread
# count (2), same library versions as the shipped files (pyproject.toml pins them). Exit status 0 only when every
# weight matches. Stage 0 is the recipe that sees and draws shapes (the scripts' defaults: max-pooled CLIP with
# layer scale 1.0, 8,000 UNet steps); see docs/TOY_WORLD.md, What ships.
# Bit for bit only on the kind of CPU that made the files: another kind rounds differently and training drifts. The
# deem-toy shipped now is these three commands' output on a machine whose CPU reads "AMD EPYC" (2 threads,
# 2026-11-23: 103 min end to end, stage 0 76 of them; stage0/settings.json records the alignment's CPU).
# The alignment half alone (about 6 minutes, same CPU kind): the earlier stage-II model (commit e0e166e) aligned
# again and compared with the deem-toy its alignment shipped (commit 928409b):
#   ./scripts/reproduce_deem_toy.sh --alignment [scratch folder]
#   ./scripts/reproduce_deem_toy.sh [scratch folder, default outputs/toy-reproduce]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if [[ "${1:-}" == "--alignment" ]]; then
    out=${2:-outputs/toy-reproduce-alignment}
    stage2=e0e166e   # the last commit whose deem-toy is an unaligned stage-II model (the earlier one)
    aligned=928409b  # the deem-toy that aligning it shipped (on an AMD EPYC machine, 2 threads)
    rm -rf "$out" "$out.expected" && mkdir -p "$out.expected"
    git archive "$aligned" hub_configs/deem-toy | tar -x -C "$out.expected" --strip-components=2
    cp -r "$out.expected" "$out"
    git show "$stage2:hub_configs/deem-toy/model.safetensors" > "$out/model.safetensors"
    git show "$stage2:hub_configs/deem-toy/stage0/settings.json" > "$out/stage0/settings.json"
    .venv/bin/python -c "import sys, toyworld.ship as s; print(s.align_shipped(sys.argv[1]))" "$out"
    exec .venv/bin/python -m toyworld.reproduction "$out" "$out.expected"
fi
out=${1:-outputs/toy-reproduce}
.venv/bin/python -m toyworld.study --output-dir "$out" --seeds 0 --lambdas 5
.venv/bin/python -m toyworld.ship --study "$out" --run csr5-seed0 --output "$out/ship"
.venv/bin/python -m toyworld.reproduction "$out/ship" hub_configs/deem-toy
