"""Which offline potential: CHGNet 0.3.0, SevenNet-0 and SevenNet-l3i5 (all weights in their wheels) on DFT data.

Measured on ``../shared/data`` (small subsets, so that the run takes minutes on a 2-core machine; sizes
printed and set by the options):

* **MP task frames** (``emmet_test_files/tasks_Li_Fe_V.json.gz``: 99 MP GGA calculations of elemental Li,
  Fe and V, MP's own settings, 1–28 atoms): total energy per atom against the last ionic step's
  ``e_fr_energy`` (MAE, meV/atom), and forces (MAE per component, meV/Å) where the frame has nonzero ones;
* **mlearn** (Zuo et al. 2020, PBE but *not* MP's settings: ``mlearn/{Li,Si}/test.json``, ``--n-mlearn`` of
  its 54 frames of 8–96 atoms, AIMD and defects): forces only (MAE per component, meV/Å; the energies carry a settings offset);
* **MP-20 relaxation** (the first ``--n-relax`` rows of ``mp20_mini_slices/raw_mp20_dataset_mini.csv``,
  started from the MP structures): relaxed with ``battgen relax``'s defaults (FIRE, Fréchet filter,
  fmax 0.05 eV/Å; the batched engine), then the formation energy against MP's own (from the model's
  energy and MP's elemental reference energies, ``mp_elemental_refs``, as Matbench Discovery does; MAE
  meV/atom) and the volume per atom against MP's (mean |ΔV|/V, %);
* **speed**: seconds per single point (energy, forces, stress through the ASE calculator, MP-20 rows) and
  per relaxation (batched engine, ``--threads`` torch threads).

Usage: ``python benchmarks/mlip_choice.py [--n-relax 10] [--n-frames 99] [--n-mlearn 12] [--models chgnet,7net-0,7net-l3i5]``;
one table, and a last line ``key=value``: ``<model>_eform_mae_meV=... <model>_e_mae_meV=... <model>_f_mae_meV=...``
for each model.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = {"chgnet": ("chgnet", None), "7net-0": ("sevennet", "7net-0"), "7net-l3i5": ("sevennet", "7net-l3i5")}


def shared_data_dir() -> Path:
    return Path(os.environ.get("BATTGEN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


def load(name: str):
    from battgen.mlip.calculators import load_chgnet, load_sevennet

    family, model = MODELS[name]
    return load_chgnet() if family == "chgnet" else load_sevennet(model)


def mp_task_frames(data: Path, n: int):
    """(atoms, DFT energy eV, DFT forces eV/Å) of the last ionic step of each MP task."""
    from pymatgen.core import Structure

    tasks = json.load(gzip.open(data / "emmet_test_files" / "tasks_Li_Fe_V.json.gz"))
    frames = []
    for task in tasks[:n]:
        step = task["calcs_reversed"][0]["output"]["ionic_steps"][-1]
        structure = Structure.from_dict(step["structure"])
        frames.append((structure.to_ase_atoms(), float(step["e_fr_energy"]), np.array(step["forces"])))
    return frames


def mlearn_frames(data: Path, n: int):
    """``n`` frames spread evenly over the Li and Si test sets (half each)."""
    from pymatgen.core import Structure

    frames = []
    for element in ("Li", "Si"):
        records = json.loads((data / "mlearn" / element / "test.json").read_text())
        picked = np.linspace(0, len(records) - 1, max(1, n // 2)).round().astype(int) if n < len(records) * 2 else range(len(records))
        for index in sorted(set(int(i) for i in picked)):
            record = records[index]
            structure = Structure.from_dict(record["structure"])
            frames.append((structure.to_ase_atoms(), float(record["outputs"]["energy"]),
                           np.array(record["outputs"]["forces"])))
    return frames


def single_point(atoms, calculator):
    atoms = atoms.copy()
    atoms.calc = calculator
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-relax", type=int, default=10, help="MP-20 rows relaxed per model (default 10)")
    parser.add_argument("--n-frames", type=int, default=99, help="MP task frames (default all 99)")
    parser.add_argument("--n-mlearn", type=int, default=12, help="mlearn Li+Si test frames (default 12 of 54)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, from " + ", ".join(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import torch
    from monty.json import MontyDecoder

    from battgen.mlip.relax import relax_batch
    from battgen.sources.files import read_mp20_csv

    torch.set_num_threads(args.threads)
    data = shared_data_dir()
    if not (data / "mp20_mini_slices").exists():
        sys.exit(f"shared data not found at {data} (set BATTGEN_SHARED_DATA)")
    mp_frames = mp_task_frames(data, args.n_frames)
    ml_frames = mlearn_frames(data, args.n_mlearn)
    mp20, _ = read_mp20_csv(data / "mp20_mini_slices" / "raw_mp20_dataset_mini.csv", max_rows=args.n_relax)
    with gzip.open(data / "mp_elemental_refs" / "2023-02-07-mp-elemental-reference-entries.json.gz", "rt") as handle:
        references = {el: entry.energy_per_atom for el, entry in json.load(handle, cls=MontyDecoder).items()}
    print(f"data: {len(mp_frames)} MP task frames, {len(ml_frames)} mlearn frames, {len(mp20)} MP-20 relaxations; "
          f"{args.threads} torch threads", flush=True)

    rows, last = [], {}
    for name in args.models.split(","):
        calculator, info = load(name)
        e_err, f_err_mp, f_err_ml = [], [], []
        started = time.perf_counter()
        for atoms, energy, forces in mp_frames:
            e, f, _ = single_point(atoms, calculator)
            e_err.append(abs(e - energy) / len(atoms))
            if np.abs(forces).max() > 1e-6:
                f_err_mp.extend(np.abs(f - forces).ravel())
        for atoms, _, forces in ml_frames:
            _, f, _ = single_point(atoms, calculator)
            f_err_ml.extend(np.abs(f - forces).ravel())
        frames_s = time.perf_counter() - started
        started = time.perf_counter()
        for structure in mp20.structures:
            single_point(structure.to_ase_atoms(), calculator)
        per_point = (time.perf_counter() - started) / len(mp20)
        started = time.perf_counter()
        relaxed, records = relax_batch(mp20, mlip=info.name, calculator=calculator,
                                       supported_elements=info.supported_elements, progress=False, engine="batched")
        per_relax = (time.perf_counter() - started) / len(mp20)
        eform_err, volume_err, converged = [], [], 0
        for (meta, structure), record, start in zip(relaxed, records, mp20.structures):
            if record["relax_status"] != "converged":
                continue
            converged += 1
            composition = structure.composition
            eform = (record["energy_eV"] - sum(n * references[el.symbol] for el, n in composition.items())) / len(structure)
            eform_err.append(abs(eform - meta["formation_energy_per_atom_eV"]))
            volume_err.append(abs(structure.volume - start.volume) / start.volume)
        row = {
            "model": info.model_name, "version": f"{info.package} {info.package_version}",
            "e_mae_meV": 1000 * float(np.mean(e_err)), "f_mae_mp_meV": 1000 * float(np.mean(f_err_mp)) if f_err_mp else float("nan"),
            "f_mae_mlearn_meV": 1000 * float(np.mean(f_err_ml)), "eform_mae_meV": 1000 * float(np.mean(eform_err)),
            "vol_err_pct": 100 * float(np.mean(volume_err)), "converged": f"{converged}/{len(mp20)}",
            "s_per_point": per_point, "s_per_relax": per_relax, "frames_s": frames_s,
        }
        rows.append(row)
        print(f"{name}: done ({frames_s:.0f} s frames, {per_relax * len(mp20):.0f} s relaxations)", flush=True)
        last.update({f"{name}_eform_mae_meV": f"{row['eform_mae_meV']:.1f}", f"{name}_e_mae_meV": f"{row['e_mae_meV']:.1f}",
                     f"{name}_f_mae_meV": f"{row['f_mae_mlearn_meV']:.1f}", f"{name}_vol_err_pct": f"{row['vol_err_pct']:.2f}",
                     f"{name}_s_per_relax": f"{per_relax:.2f}"})

    header = (f"{'model':<14}{'E MP frames':>12}{'F MP':>8}{'F mlearn':>10}{'E_form MP-20':>14}{'|dV|/V':>8}"
              f"{'relaxed':>9}{'s/point':>9}{'s/relax':>9}  package")
    print("\n" + header)
    print(f"{'':<14}{'meV/atom':>12}{'meV/Å':>8}{'meV/Å':>10}{'meV/atom':>14}{'%':>8}{'':>9}{'s':>9}{'s':>9}")
    for row in rows:
        print(f"{row['model']:<14}{row['e_mae_meV']:>12.1f}{row['f_mae_mp_meV']:>8.1f}{row['f_mae_mlearn_meV']:>10.1f}"
              f"{row['eform_mae_meV']:>14.1f}{row['vol_err_pct']:>8.2f}{row['converged']:>9}{row['s_per_point']:>9.3f}"
              f"{row['s_per_relax']:>9.2f}  {row['version']}")
    print(" ".join(f"{key}={value}" for key, value in last.items()))


if __name__ == "__main__":
    main()
