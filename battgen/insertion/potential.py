"""Insertion (adsorption) potential of working ions in the channels of a host, relaxed with an MLIP.

For ``n`` ions of charge ``z`` put into sites of one type (:mod:`battgen.insertion.sites`)::

    V = −(E(host + n ion) − E(host) − n · E_ref(ion)) / (n · z)        [V, per ion and per elementary charge]

with total energies in eV; V > 0 means inserting the ion from the reference releases energy (it goes in
spontaneously against a metal anode). ``insertion_energy_per_ion_eV`` = (E(host + n) − E(host) − n E_ref) / n
is seed 001's ΔE_f / n (its "adsorption potential" is −ΔE_f / n; for z = 1 equal to V). The reference
``E_ref`` is, by default, the energy per atom of the bulk metal (``battgen.stability.elemental`` structure:
bcc Li/Na, hcp Mg/Zn, fcc Ca/Al, …) relaxed with the same MLIP and settings; a number given in
``reference_energies_eV_per_atom`` replaces it (e.g. seed 001's DFT values Li −1.8978, Ca −1.980,
Al −3.45 eV). Every row names its reference.

Bader charge transfer (seed 001 Tables 1–2) is a DFT post-step: :func:`bader_charges` runs the ``bader``
binary on a CHGCAR / cube through pymatgen when the binary is on PATH, else returns a clear message.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymatgen.core import Structure
from battgen.contracts.insertion import (  # noqa: F401 - re-exported: the insertion file names
    OUTPUT_BATCH, OUTPUT_FIGURE, OUTPUT_TABLE_CSV, OUTPUT_TABLE_JSON, InsertionSettings,
)
from battgen.contracts.ions import ion_charges
from battgen.insertion.sites import SiteType, choose_sites, find_insertion_sites
from battgen.progress import track

# Charge z of each working ion (electrons transferred per inserted ion): pymatgen's formal charges.
ION_CHARGES = ion_charges()
UNITS = {
    "voltage_V": "V", "insertion_energy_per_ion_eV": "eV/ion", "energy_host_eV": "eV",
    "energy_inserted_eV": "eV", "reference_energy_eV_per_atom": "eV/atom", "site_radius_A": "Å",
    "site_min_distance_A": "Å", "max_force_eV_per_A": "eV/Å", "fmax": "eV/Å", "charge_transfer_e": "e",
    "bader_charge_e": "e",
}


def insertion_voltage_V(energy_inserted_eV: float, energy_host_eV: float, n_ions: int,
                        reference_energy_eV_per_atom: float, ion_charge: int) -> float:
    """V = −(E(host + n ion) − E(host) − n E_ref) / (n z), in volts (energies in eV)."""
    if n_ions <= 0 or ion_charge <= 0:
        raise ValueError(f"n_ions and ion_charge must be positive, got {n_ions}, {ion_charge}")
    values = (energy_inserted_eV, energy_host_eV, reference_energy_eV_per_atom)
    if not all(math.isfinite(float(v)) for v in values):
        raise ValueError(f"energies must be finite numbers, got {values}")
    delta = energy_inserted_eV - energy_host_eV - n_ions * reference_energy_eV_per_atom
    return -delta / (n_ions * ion_charge)


@dataclass
class InsertionResult:
    ion: str
    n_ions: int
    site_type: str
    channel: str
    site_radius_A: float
    site_min_distance_A: float
    energy_host_eV: float
    energy_inserted_eV: float | None
    reference_energy_eV_per_atom: float
    reference: str
    voltage_V: float | None
    insertion_energy_per_ion_eV: float | None
    relax_status: str
    max_force_eV_per_A: float | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def insert_ions(host: Structure, site_type: SiteType, ion: str, n_ions: int) -> Structure:
    """``host`` with ``n_ions`` ions of ``ion`` on sites of ``site_type`` (spread as far apart as possible)."""
    inserted = host.copy()
    for coords in choose_sites(host, site_type.frac_coords, n_ions):
        inserted.append(ion, coords, coords_are_cartesian=False)
    return inserted


def _relax(structure: Structure, calculator: Any, supported: Any, settings: dict[str, Any],
           fixed_cell: bool = False) -> tuple[Structure, dict[str, Any]]:
    from battgen.mlip.relax import relax_structure

    return relax_structure(
        structure, calculator, supported_elements=supported, fmax=settings["fmax"],
        max_steps=settings["max_steps"], cell_filter=None if fixed_cell else settings["cell_filter"],
        optimizer=settings["optimizer"],
    )


def reference_energy(ion: str, calculator: Any, supported: Any, settings: dict[str, Any]) -> tuple[float, str]:
    """(E per atom in eV, description) of the bulk metal of ``ion`` relaxed with ``calculator``."""
    from battgen.stability.elemental import elemental_reference_structure

    structure, info = elemental_reference_structure(ion)
    reference_settings = {**settings, "max_steps": max(settings["max_steps"], 200)}
    relaxed, record = _relax(structure, calculator, supported, reference_settings,
                             fixed_cell=bool(info.get("fixed_cell")))
    if record["energy_per_atom_eV"] is None:
        raise RuntimeError(f"relaxing the {ion} reference failed: {record['relax_message']}")
    return float(record["energy_per_atom_eV"]), f"bulk {ion} ({info['source']}) relaxed with the same MLIP"


# Relaxation and site settings with their defaults (declared, with units and ranges, in InsertionSettings).
DEFAULT_SETTINGS: dict[str, Any] = {
    key: InsertionSettings.defaults()[key] for key in (
        "mlip", "model_path", "device", "fmax", "max_steps", "cell_filter", "optimizer", "supercell",
        "max_site_types", "sites_per_channel", "min_site_radius_A", "min_distance_A", "radii", "mobile_ion")
}


def insertion_potentials(
    host: Structure,
    ions: list[str],
    n_ions: list[int],
    *,
    calculator: Any = None,
    supported_elements: Any = None,
    reference_energies_eV_per_atom: dict[str, float] | None = None,
    progress: bool = True,
    **overrides: Any,
) -> tuple[list[InsertionResult], list[SiteType], list[Structure]]:
    """V for every (ion, n, site type); returns (results, site types, relaxed host+ion structures).

    The host is relaxed once with the same settings (``cell_filter`` None = fixed cell, the default for
    screening insertions into a rigid framework). ``calculator``: an ASE calculator to use instead of
    loading ``mlip`` (tests pass a cheap one with ``supported_elements``).
    """
    settings = {**DEFAULT_SETTINGS, **overrides}
    for ion in ions:
        if ion not in ION_CHARGES:
            raise ValueError(f"unknown working ion {ion!r}; known: {sorted(ION_CHARGES)}")
    if not n_ions or any(int(n) < 1 for n in n_ions):
        raise ValueError(f"n_ions must be positive integers, got {n_ions}")
    if calculator is None:
        from battgen.mlip.relax import load_relax_mlip

        calculator, info = load_relax_mlip(settings["mlip"], model_path=settings["model_path"],
                                           device=settings["device"])
        supported_elements = info.supported_elements

    host = host.copy()
    host.remove_oxidation_states()
    host = host * settings["supercell"]
    all_site_types = find_insertion_sites(
        host, radii=settings["radii"], mobile_ion=settings["mobile_ion"],
        min_site_radius_A=settings["min_site_radius_A"], min_distance_A=settings["min_distance_A"],
    )
    # widest sites first, at most sites_per_channel of each channel, max_site_types in all
    site_types: list[SiteType] = []
    for site_type in all_site_types:
        if sum(t.channel == site_type.channel for t in site_types) < int(settings["sites_per_channel"]):
            site_types.append(site_type)
    site_types = site_types[: int(settings["max_site_types"])]
    if not site_types:
        raise ValueError("no insertion site found: no Voronoi node with a sphere of radius ≥ "
                         f"{settings['min_site_radius_A']} Å at ≥ {settings['min_distance_A']} Å from the framework")

    relaxed_host, host_record = _relax(host, calculator, supported_elements, settings)
    if host_record["energy_eV"] is None:
        raise RuntimeError(f"relaxing the host failed: {host_record['relax_message']}")
    energy_host = float(host_record["energy_eV"])

    references: dict[str, tuple[float, str]] = {}
    for ion in ions:
        given = (reference_energies_eV_per_atom or {}).get(ion)
        references[ion] = ((float(given), f"given: {given} eV/atom") if given is not None
                           else reference_energy(ion, calculator, supported_elements, settings))

    jobs = [(ion, int(n), t) for ion in ions for n in n_ions for t in site_types if int(n) <= len(t.frac_coords)]
    results, structures = [], []
    for ion, n, site_type in track(jobs, total=len(jobs), desc="insertion", unit="relax", disable=not progress,
                                   label=lambda job: f"{job[1]} {job[0]} in channel {job[2].channel}"):
        inserted = insert_ions(relaxed_host, site_type, ion, n)
        relaxed, record = _relax(inserted, calculator, supported_elements, settings)
        e_ref, reference = references[ion]
        energy = record["energy_eV"]
        voltage = None if energy is None else insertion_voltage_V(energy, energy_host, n, e_ref, ION_CHARGES[ion])
        results.append(InsertionResult(
            ion=ion, n_ions=n, site_type=site_type.label, channel=site_type.channel, site_radius_A=site_type.radius_A,
            site_min_distance_A=site_type.min_distance_A, energy_host_eV=energy_host, energy_inserted_eV=energy,
            reference_energy_eV_per_atom=e_ref, reference=reference, voltage_V=voltage,
            insertion_energy_per_ion_eV=None if energy is None else (energy - energy_host - n * e_ref) / n,
            relax_status=record["relax_status"], max_force_eV_per_A=record["max_force_eV_per_A"],
        ))
        structures.append(relaxed)
    return results, site_types, structures


# ---------------------------------------------------------------- Bader (optional DFT post-step)

def parse_acf(path: str | Path) -> dict[str, Any]:
    """Parse a Bader ``ACF.dat`` (pymatgen's parser): per-atom charges (e) and volumes, totals."""
    from pymatgen.command_line.bader_caller import BaderAnalysis

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ACF.dat at {path}")
    analysis = BaderAnalysis.__new__(BaderAnalysis)
    with contextlib.chdir(path.parent):
        if path.name != "ACF.dat":
            raise ValueError(f"the Bader output file must be called ACF.dat, got {path.name}")
        atoms = analysis._parse_acf()
    return {
        "charges_e": [a["charge"] for a in atoms], "atomic_volumes_A3": [a["atomic_vol"] for a in atoms],
        "n_electrons": getattr(analysis, "nelectrons", None),
        "vacuum_charge_e": getattr(analysis, "vacuum_charge", None),
    }


def charge_transfer_e(charges_e: list[float], symbols: list[str], valence_electrons: dict[str, float],
                      indices: list[int]) -> list[float]:
    """Electrons given away by the atoms at ``indices``: valence electrons (of the pseudopotential) − Bader charge."""
    return [float(valence_electrons[symbols[i]]) - float(charges_e[i]) for i in indices]


def bader_charges(density_file: str | Path, workdir: str | Path | None = None) -> dict[str, Any]:
    """Run ``bader`` on a CHGCAR or cube file; ``{"available": False, "message": ...}`` without the binary."""
    binary = shutil.which("bader")
    density_file = Path(density_file)
    if binary is None:
        return {"available": False, "message": "Bader analysis skipped: no 'bader' binary on PATH (download from "
                "https://theory.cm.utexas.edu/henkelman/code/bader/); insertion voltages are unaffected"}
    if not density_file.is_file():
        return {"available": False, "message": f"Bader analysis skipped: charge density file {density_file} not found"}
    from pymatgen.command_line.bader_caller import BaderAnalysis

    kind = "cube_filename" if density_file.suffix.lower() == ".cube" else "chgcar_filename"
    with contextlib.chdir(workdir or density_file.parent):
        analysis = BaderAnalysis(**{kind: str(density_file.resolve())}, bader_path=binary)
    return {"available": True, "charges_e": [a["charge"] for a in analysis.data],
            "atomic_volumes_A3": [a["atomic_vol"] for a in analysis.data], "n_electrons": analysis.nelectrons}


# ---------------------------------------------------------------- figure and command

def plot_insertion(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Bar chart: V per ion for each channel (its site type in the legend), one group per (host, ion, n)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = sorted({(r["host"], r["ion"], r["n_ions"]) for r in rows})
    site_labels = sorted({(r["channel"], r["site_type"]) for r in rows})
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(groups) + 2), 4))
    width = 0.8 / max(1, len(site_labels))
    for k, (channel, site) in enumerate(site_labels):
        values = [next((r["voltage_V"] for r in rows if (r["host"], r["ion"], r["n_ions"]) == g
                        and r["site_type"] == site and r["voltage_V"] is not None), np.nan) for g in groups]
        ax.bar(np.arange(len(groups)) + k * width, values, width, label=f"{channel} ({site})")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{h}\n{n} {ion}" for h, ion, n in groups], fontsize=8)
    ax.set_ylabel("insertion potential V (V vs. bulk metal)")
    ax.legend(title="channel (site), widest first", fontsize=8)
    ax.set_title(title or "Insertion potential per ion and channel")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


RESULT_COLUMNS = ("host", "ion", "n_ions", "channel", "site_type", "site_radius_A", "site_min_distance_A", "voltage_V",
                  "insertion_energy_per_ion_eV", "energy_host_eV", "energy_inserted_eV",
                  "reference_energy_eV_per_atom", "reference", "relax_status", "max_force_eV_per_A")


def _validate(config: dict[str, Any]) -> dict[str, Any]:
    """Settings checked by :class:`~battgen.contracts.insertion.InsertionSettings`, ions and counts as lists."""
    if "input" not in config:
        raise ValueError("config needs 'input': the host structure file (batch .jsonl.gz, .extxyz or .cif)")
    checked = InsertionSettings.from_config(config)
    ions = checked.ions or ["Li"]
    ions = [ions] if isinstance(ions, str) else list(ions)
    n_ions = checked.n_ions or [1]
    n_ions = [n_ions] if isinstance(n_ions, int) else list(n_ions)
    references = checked.reference_energies_eV_per_atom or {}
    if any(not math.isfinite(v) for v in references.values()):
        raise ValueError("reference_energies_eV_per_atom must map ion -> finite energy in eV/atom")
    settings = {key: getattr(checked, key) for key in DEFAULT_SETTINGS}
    return {"ions": ions, "n_ions": n_ions, "references": references, "settings": settings}


def run_insertion_command(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """``battgen insertion``: config ``input`` (host structures), ``ions`` (Li, Na, Mg, Ca, Al, Zn, K),
    ``n_ions`` (list), optional ``reference_energies_eV_per_atom``, MLIP and relaxation settings
    (:data:`DEFAULT_SETTINGS`), ``bader: {density_file, ...}`` for the optional Bader step.

    Writes ``inserted.jsonl.gz`` (relaxed host + ion structures with the result columns), ``insertion.csv``,
    ``insertion.json`` (table with units, the site types and the references) and ``insertion.png``.
    """
    from battgen.batch import BatchFormatError, StructureBatch
    from battgen.channels.analysis import _read_input
    from battgen.errors import InvalidInputError
    from battgen.report import write_csv

    try:
        checked = _validate(config)
        hosts = _read_input(workdir / str(config["input"]))
    except (BatchFormatError, ValueError, TypeError, FileNotFoundError) as exc:
        raise InvalidInputError(str(exc)) from exc
    if len(hosts) == 0:
        raise InvalidInputError(f"input {config['input']} holds no structures")

    started = time.perf_counter()
    rows, sites, structures, metas = [], {}, [], []
    for meta, host in hosts:
        try:
            results, site_types, relaxed = insertion_potentials(
                host, checked["ions"], checked["n_ions"], reference_energies_eV_per_atom=checked["references"],
                progress=bool(config.get("progress", True)), **checked["settings"],
            )
        except ValueError as exc:
            raise InvalidInputError(f"{meta['row_id']}: {exc}") from exc
        sites[meta["row_id"]] = [t.as_dict() for t in site_types]
        for result, structure in zip(results, relaxed):
            row = {"host": meta["row_id"], **result.as_dict()}
            rows.append(row)
            structures.append(structure)
            metas.append({**row, "row_id": f"{meta['row_id']}-{result.ion}{result.n_ions}-{result.site_type}"})

    bader = None
    if config.get("bader"):
        density = workdir / str(config["bader"].get("density_file", "CHGCAR"))
        bader = bader_charges(density, workdir)

    StructureBatch(structures, metas).write(workdir / OUTPUT_BATCH)
    write_csv(rows, RESULT_COLUMNS, workdir / OUTPUT_TABLE_CSV)
    formula = "V = -(E(host+n ion) - E(host) - n E_ref(ion)) / (n z)"
    (workdir / OUTPUT_TABLE_JSON).write_text(json.dumps(
        {"formula": formula, "units": UNITS, "ion_charges": ION_CHARGES, "settings": checked["settings"],
         "site_types": sites, "rows": rows, "bader": bader}, indent=1), encoding="utf-8")
    plot_insertion(rows, workdir / OUTPUT_FIGURE)
    return {
        "output": OUTPUT_BATCH, "table_csv": OUTPUT_TABLE_CSV, "table_json": OUTPUT_TABLE_JSON,
        "figure": OUTPUT_FIGURE, "n_hosts": len(hosts), "n_insertions": len(rows), "formula": formula,
        "references": sorted({f"{r['ion']}: {r['reference']} = {r['reference_energy_eV_per_atom']:.4f} eV/atom"
                              for r in rows}),
        "voltages_V": [{k: r[k] for k in ("host", "ion", "n_ions", "channel", "site_type", "voltage_V")} for r in rows],
        "bader": bader, "seconds": round(time.perf_counter() - started, 3), "units": UNITS,
    }
