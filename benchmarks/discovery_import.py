"""Import time of the ``battgen.discovery`` entry point, with and without the DFT work chains (issue 17, item 1).

Before issue 17, loading ``battgen.discovery`` also loaded ``battgen.dft.formation_energy`` (and with it
aiida-vasp and aiida-quantumespresso) at import; now the DFT chain is loaded only where the DFT stage runs.
Both costs are measured here in fresh interpreters (min of ``--repeat`` runs, seconds of wall time):

* ``discovery_s``: ``WorkflowFactory("battgen.discovery")`` alone (what every ``verdi`` call, submit and daemon
  worker that loads the discovery pays now);
* ``with_dft_s``: the same plus ``WorkflowFactory("battgen.dft.formation_energy")`` (what it paid before).

Each run also reports whether aiida_vasp / aiida_quantumespresso ended up in ``sys.modules``: the discovery alone
must not import them (``dft_imported_by_discovery=false``).

Usage: ``python benchmarks/discovery_import.py [--repeat 5]``; last line:
``discovery_s=<s> with_dft_s=<s> saved_s=<s> dft_imported_by_discovery=<true|false>``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

PROBE = """
import json, sys, time
started = time.perf_counter()
from aiida.plugins import WorkflowFactory
WorkflowFactory("battgen.discovery")
{extra}
print(json.dumps({{"seconds": time.perf_counter() - started,
                   "dft_modules": sorted(m for m in ("aiida_vasp", "aiida_quantumespresso") if m in sys.modules)}}))
"""
WITH_DFT = 'WorkflowFactory("battgen.dft.formation_energy")'


def time_import(extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", PROBE.format(extra=extra)], capture_output=True, text=True,
                            env=env, timeout=300, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=5, help="fresh interpreters per variant (min is reported)")
    args = parser.parse_args()
    discovery, with_dft = [], []
    dft_imported = False
    for _ in range(args.repeat):  # interleaved, so a busy moment of the machine hits both variants alike
        alone = time_import("")
        discovery.append(alone["seconds"])
        dft_imported |= bool(alone["dft_modules"])
        with_dft.append(time_import(WITH_DFT)["seconds"])
    print(f"battgen.discovery alone:           min {min(discovery):.2f} s  runs {[round(t, 2) for t in discovery]}")
    print(f"battgen.discovery + DFT work chain: min {min(with_dft):.2f} s  runs {[round(t, 2) for t in with_dft]}")
    print(f"discovery_s={min(discovery):.2f} with_dft_s={min(with_dft):.2f} "
          f"saved_s={min(with_dft) - min(discovery):.2f} dft_imported_by_discovery={str(dft_imported).lower()}")


if __name__ == "__main__":
    main()
