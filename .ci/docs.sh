#!/usr/bin/env bash
# Build the documentation site (Sphinx + MyST, API from the docstrings) with warnings as errors.
# Installs the `docs` extra into the venv first (CI provisioning, never from pytest); output in ${1:-docs/_build/html}. The process directives of aiida.sphinxext load a
# profile: a throw-away SQLite one in a temporary AIIDA_PATH (no services).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BATTGEN_VENV:-$PWD/.venv}/bin"
OUT="${1:-docs/_build/html}"
AIIDA_PATH="$(mktemp -d)"
export AIIDA_PATH
trap 'rm -rf "$AIIDA_PATH"' EXIT
"$BIN/pip" install -q -c constraints.txt -e ".[docs]" 2> >(grep -v "is neither a file nor a directory" >&2)
"$BIN/verdi" presto --profile-name docs >/dev/null
"$BIN/sphinx-build" -q -W --keep-going -b html docs "$OUT"
echo "documentation site built in $OUT"
# The checks that need docutils (skipped by the main test run, which has no `docs` extra):
"$BIN/pytest" -q -p no:cacheprovider tests/test_docs_site.py
