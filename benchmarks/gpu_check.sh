#!/usr/bin/env bash
# The generators on one GPU: CDVAE and the crystal LM trained for a fixed budget, 1,000 samples each,
# training steps/s and samples/s on the GPU and on the CPU, validity; ends with one key=value line.
#
#   benchmarks/gpu_check.sh --build     here, with PyPI: wheels of gpu_wheelhouse.txt + battgen's own wheel
#                                       + the two data files into .wheelhouse/ (ignored; at most 60 MiB)
#   benchmarks/gpu_check.sh             on the GPU machine (python 3.12 with torch, transformers, peft; no
#                                       network): install from .wheelhouse/ into a scratch folder, run
#                                       benchmarks/gpu_check.py (at most 8 minutes)
#   benchmarks/gpu_check.sh --dry-run   CI, on a CPU: checks the recipe, the data and the commands; builds,
#                                       installs and trains nothing
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
WHEELHOUSE=${BATTGEN_WHEELHOUSE:-$ROOT/.wheelhouse}
RECIPE=$HERE/gpu_wheelhouse.txt
SHARED_DATA=${BATTGEN_SHARED_DATA:-$ROOT/../shared/data}
PYTHON=${PYTHON:-python3}
MAX_MIB=60
RUN_LIMIT_S=480
SITE=${BATTGEN_GPU_SITE:-/tmp/battgen-gpu-site}
DATA_FILES=(cdvae_perov_5/val.csv mp20_mini_slices/raw_mp20_dataset_mini.csv)
DOWNLOAD=("$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
          -d "$WHEELHOUSE" -r "$RECIPE")
PROJECT_WHEEL=("$PYTHON" -m pip wheel --no-deps --no-build-isolation -w "$WHEELHOUSE" "$ROOT")
INSTALL=("$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE")

check_recipe() {  # one pinned version a line; nothing the GPU image already has; the versions CI runs
  "$PYTHON" - "$RECIPE" <<'PY'
import re, sys
from importlib import metadata
preinstalled = {"torch", "torch-geometric", "transformers", "peft", "tokenizers", "numpy", "scipy", "pandas",
                "tqdm", "pyyaml", "matplotlib", "networkx", "sympy", "tabulate", "requests", "joblib"}
problems, names = [], set()
for line in open(sys.argv[1], encoding="utf-8"):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+-]*)", line)
    if not match:
        problems.append(f"not NAME==VERSION: {line!r}")
        continue
    name, version = match.group(1).lower().replace("_", "-"), match.group(2)
    if name in names:
        problems.append(f"{name} twice (two versions stop the whole install)")
    names.add(name)
    if name in preinstalled:
        problems.append(f"{name} is already on the GPU machine; carrying it would replace that build")
    try:
        installed = metadata.version(name)
    except metadata.PackageNotFoundError:
        problems.append(f"{name} is not installed here, so CI never tests it")
        continue
    if installed != version:
        problems.append(f"{name}=={version} but CI runs {installed}")
for problem in problems:
    print(f"gpu_check.sh: recipe: {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
}

case "${1:-}" in
  --dry-run)
    bash -n "$0"
    check_recipe
    echo "would build: ${DOWNLOAD[*]}"
    echo "would build: ${PROJECT_WHEEL[*]}"
    echo "would run:   ${INSTALL[*]} $WHEELHOUSE/*.whl"
    echo "would run:   timeout $RUN_LIMIT_S $PYTHON $HERE/gpu_check.py --data $WHEELHOUSE/data"
    "$PYTHON" "$HERE/gpu_check.py" --dry-run --data "$SHARED_DATA"
    ;;
  --build)
    check_recipe
    rm -rf "$WHEELHOUSE" && mkdir -p "$WHEELHOUSE/data"
    "${DOWNLOAD[@]}"
    "${PROJECT_WHEEL[@]}"
    for file in "${DATA_FILES[@]}"; do
      mkdir -p "$WHEELHOUSE/data/$(dirname "$file")" && cp "$SHARED_DATA/$file" "$WHEELHOUSE/data/$file"
    done
    size_mib=$(du -sm "$WHEELHOUSE" | cut -f1)
    if [ "$size_mib" -gt "$MAX_MIB" ]; then
      echo "gpu_check.sh: the wheelhouse is $size_mib MiB, more than $MAX_MIB" >&2; exit 1
    fi
    echo "gpu_check.sh: wheelhouse $WHEELHOUSE: $(ls "$WHEELHOUSE"/*.whl | wc -l) wheels, $size_mib MiB"
    ;;
  "")
    [ -d "$WHEELHOUSE/data" ] || { echo "gpu_check.sh: no wheelhouse at $WHEELHOUSE; run --build first" >&2; exit 2; }
    "${INSTALL[@]}" "$WHEELHOUSE"/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    cd /tmp  # import battgen from the wheel just installed, not from the checkout
    timeout "$RUN_LIMIT_S" "$PYTHON" "$HERE/gpu_check.py" --data "$WHEELHOUSE/data" --workdir /tmp/battgen-gpu-check
    ;;
  *)
    sed -n '2,12p' "$0" >&2; exit 2
    ;;
esac
