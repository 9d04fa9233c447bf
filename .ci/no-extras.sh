#!/usr/bin/env bash
# Optional extras stay optional: a venv with the base install only (no dft, generative, predictors, mlip, ...)
# loads every entry point that needs none of them (.ci/check_entry_points.py). Packages come from pip's
# cache / the machine's wheel index, so this takes about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${BATTGEN_NO_EXTRAS_VENV:-}" ]; then
  VENV="$BATTGEN_NO_EXTRAS_VENV"
else
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  VENV="$scratch/venv-no-extras"
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q -c constraints.txt -e . 2> >(grep -v "is neither a file nor a directory" >&2)
"$VENV/bin/python" .ci/check_entry_points.py
