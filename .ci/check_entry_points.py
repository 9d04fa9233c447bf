"""Load every aiida-battgen entry point in a venv installed without the optional extras (.ci/no-extras.sh).

Entry points that need an extra are listed in NEEDS_EXTRA with the extra; every other one must load, and
loading ``battgen.discovery`` must not import aiida-vasp, aiida-quantumespresso or torch. Exit 0 when all
holds, 1 otherwise (each failure printed with its error).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

NEEDS_EXTRA = {
    ("aiida.workflows", "battgen.dft.relax"): "dft",
    ("aiida.workflows", "battgen.dft.formation_energy"): "dft",
    ("battgen.generators", "battgen.cdvae"): "generative",
    **{("battgen.predictors", name): "predictors" for name in (
        "battgen.alignn", "battgen.m3gnet", "battgen.megnet", "battgen.magpie-cnn", "battgen.xrd-cnn",
        "battgen.voltage-cgcnn")},
}
ABSENT_HERE = ("torch", "aiida_vasp", "aiida_quantumespresso", "transformers", "alignn")
KEPT_OUT_OF_DISCOVERY = ("aiida_vasp", "aiida_quantumespresso", "torch")


def main() -> int:
    failures = []
    present = [name for name in ABSENT_HERE if importlib.util.find_spec(name) is not None]
    if present:  # the check means nothing in a venv that has the extras
        failures.append(f"this venv is not extras-free: {present} importable")
    loaded = needs = 0
    for ep in importlib.metadata.distribution("aiida-battgen").entry_points:
        if not ep.group.startswith(("aiida.", "battgen.")):
            continue
        extra = NEEDS_EXTRA.get((ep.group, ep.name))
        try:
            ep.load()
            loaded += 1
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the check
            if extra:
                needs += 1
                print(f"needs [{extra}]: {ep.group} {ep.name} ({type(exc).__name__}: {str(exc)[:80]})")
            else:
                failures.append(f"{ep.group} {ep.name} does not load without extras: {type(exc).__name__}: {exc}")
    probe = ("import sys; from aiida.plugins import WorkflowFactory; WorkflowFactory('battgen.discovery'); "
             f"print(' '.join(m for m in {KEPT_OUT_OF_DISCOVERY!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    if result.returncode or result.stdout.strip():
        failures.append(f"battgen.discovery imports {result.stdout.strip() or result.stderr[-500:]}")
    verdi = Path(sys.executable).with_name("verdi")
    result = subprocess.run([str(verdi), "plugin", "list", "aiida.workflows", "battgen.discovery"],
                            capture_output=True, text=True, timeout=300)
    if result.returncode or "Exit codes" not in result.stdout + result.stderr:
        failures.append(f"`verdi plugin list aiida.workflows battgen.discovery` failed: {result.stderr[-500:]}")
    for failure in failures:
        print(f"FAIL: {failure}")
    print(f"entry points loaded={loaded} need_extra={needs} failures={len(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
