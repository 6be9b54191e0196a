#!/usr/bin/env bash
# Creates or reuses .venv at the repository root and installs the package with its dev extras.
# Re-running is cheap: the install is skipped while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.deem-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # The pinned torch is a CUDA build: the installed .venv takes about 6.4 GB. Say so up front rather than let pip
  # stop half-way with "No space left on device" (seen on a CI machine).
  need_kb=$((7 * 1024 * 1024))
  for where in . "${TMPDIR:-/tmp}"; do
    free_kb=$(df -Pk "$where" | awk 'NR == 2 {print $4}')
    if [ "$free_kb" -lt "$need_kb" ]; then
      echo "setup.sh: only $((free_kb / 1024)) MB free under $where; installing .venv needs about 7 GB" \
        "(torch's CUDA build). Free some space and run it again." >&2
      exit 1
    fi
  done
  if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
    .venv/bin/python -m pip install --quiet --no-cache-dir --upgrade pip
  fi
  # torch/torchvision are pinned in pyproject.toml; pip takes them from this machine's local wheels.
  .venv/bin/python -m pip install --quiet --no-cache-dir -e ".[dev]"
  echo "$want" > "$stamp"
fi
# Headless Chromium and its driver for the demo page's browser test (tests/test_demo_app.py): Debian's packages,
# installed only when missing (no browser download at test time). Without apt-get, root or password-less sudo, or when
# the install fails, setup carries on and the test skips, saying why.
if ! { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; } \
    || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=""
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"
  else SUDO=none; fi
  if [ "$SUDO" = none ] || ! command -v apt-get >/dev/null; then
    echo "setup.sh: chromium/chromedriver missing and no apt-get with root or password-less sudo:" \
      "the browser test will skip" >&2
  elif ! { $SUDO apt-get update -qq \
      && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver fonts-dejavu-core >/dev/null; }; then
    echo "setup.sh: installing chromium/chromium-driver failed: the browser test will skip" >&2
  fi
fi
