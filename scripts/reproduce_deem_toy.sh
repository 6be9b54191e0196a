#!/usr/bin/env bash
# Rebuilds hub_configs/deem-toy from nothing and checks it bit for bit: stage 0 (toy CLIP, SD, LM), the study's
# shipped run alone (seed 0, λ_CSR 5, same settings as the study), shipped into a scratch folder (with the ship
# script's condition alignment, 3,000 steps, about 6 minutes), then compared tensor by tensor with the repository's
# copy. Same thread count (2), same library versions as the shipped files (pyproject.toml pins them). Exit status 0
# only when every weight matches. About 76 minutes on 2 CPU cores with nothing else running (run end to end on
# 2026-11-23 before the alignment existed: identical, 86 min while sharing the machine).
# Bit for bit only on the kind of CPU that made the parts: another kind rounds differently and training drifts
# (measured: on an "AMD EPYC" machine the rebuilt toy LM and CLIP differ in every tensor, at the same quality). The
# deem-toy shipped now was made in two halves, stage 0 to stage II on the machine of that check and the alignment on
# the AMD EPYC one (its stage0/settings.json records the alignment's CPU), so a full rebuild on one machine matches
# it only in part. Stage 0 is the recipe that sees and draws shapes (the scripts' defaults: max-pooled CLIP with
# layer scale 1.0, 8,000 UNet steps); see docs/TOY_WORLD.md, What ships.
# The alignment half alone (about 6 minutes): the stage-II model as shipped before the alignment (commit e0e166e),
# aligned again and compared: ./scripts/reproduce_deem_toy.sh --alignment [scratch folder]
#   ./scripts/reproduce_deem_toy.sh [scratch folder, default outputs/toy-reproduce]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if [[ "${1:-}" == "--alignment" ]]; then
    out=${2:-outputs/toy-reproduce-alignment}
    stage2=e0e166e  # the last commit whose deem-toy is the stage-II model itself
    rm -rf "$out" && cp -r hub_configs/deem-toy "$out"
    git show "$stage2:hub_configs/deem-toy/model.safetensors" > "$out/model.safetensors"
    git show "$stage2:hub_configs/deem-toy/stage0/settings.json" > "$out/stage0/settings.json"
    .venv/bin/python -c "import sys, toyworld.ship as s; print(s.align_shipped(sys.argv[1]))" "$out"
    exec .venv/bin/python -m toyworld.reproduction "$out" hub_configs/deem-toy
fi
out=${1:-outputs/toy-reproduce}
.venv/bin/python -m toyworld.study --output-dir "$out" --seeds 0 --lambdas 5
.venv/bin/python -m toyworld.ship --study "$out" --run csr5-seed0 --output "$out/ship"
.venv/bin/python -m toyworld.reproduction "$out/ship" hub_configs/deem-toy
