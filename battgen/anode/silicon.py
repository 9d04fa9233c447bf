"""Si-alloy anodes: does the Li channel keep its size across delithiation? (seed 004 §2-3).

Steps, each a plain function, chained by ``battgen si-anode`` (:func:`run_si_anode_command`):

1. **Mining** (:func:`mine_candidates`): Li–Si–X compounds (must contain the working ion and the host
   element) whose theoretical gravimetric capacity exceeds ``min_capacity_mAh_per_g`` (seed: 1500 mAh/g).
   Capacity is :func:`battgen.electrochem.capacity.electrode_capacity` for removing every Li; the default
   basis is ``host`` (per gram of the Li-free framework, the alloy-anode convention: Li15Si4 → 3579 mAh/g,
   the seed's number); ``discharged`` (pymatgen / MP Battery Explorer convention, per gram of the lithiated
   compound: Li15Si4 → 1857 mAh/g) is available. Source: a battgen batch file or any source file
   ``battgen.sources.files.read_structures`` reads (MP snapshot of ``battgen query-mp``, CIF, extxyz, ...).
2. **Delithiation sampling** (:func:`delithiated_configurations`): per compound, ``n_configurations``
   (seed: 30) configurations by random Li removal, spread evenly over lithiation levels: configuration
   i (1..n) has round(i × max_removed_fraction × N_Li / n) Li removed (at least 1), chosen uniformly at
   random with a generator seeded by (``seed``, compound index, i), applied with pymatgen's
   ``RemoveSitesTransformation``; the removed site indices (of the compound's structure as given) are
   recorded. Plus the fully lithiated compound itself (SOC 1).
   **State of charge** = Li left / Li of the fully lithiated compound (1 = fully lithiated, the charged
   anode of the seed; 0 = all Li removed); ``removed_fraction`` = 1 − SOC.
3. **Relaxation** with an MLIP (CHGNet default; :func:`battgen.mlip.relax.relax_structure`, one calculator
   for all), then per configuration the capacity (same basis, of the Li left) and the channel radius
   (:func:`battgen.channels.analysis.analyze_channels`, ``channel_radius_A`` = radius of the largest free
   sphere of the framework with the working ion removed: seed 004's R_t).
4. **Slope** of channel radius vs SOC per compound with its standard error, ranking by |slope|
   (:mod:`battgen.anode.slope`), table and figure (seed Fig. 4).

Restarts: every finished configuration is appended to ``si_anode_checkpoint.jsonl`` (flushed and fsynced)
before the next starts; a restarted run (``restart: true``, the default) skips those, so a killed job
loses at most the configuration in flight. ``max_wall_time_s`` stops cleanly after the configuration that
crosses the budget, and SIGTERM (a scheduler's walltime kill) drops the configuration in flight; both end
with status ``incomplete`` and exit code 0, and the AiiDA work chain resubmits from the remote folder.
The sampling is deterministic, so a restart regenerates the same configurations; a checkpoint written
with different settings is refused.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Element, Structure
from pymatgen.transformations.site_transformations import RemoveSitesTransformation

from battgen.anode.slope import (SLOPE_UNITS, compound_label, fit_compounds, group_points,
                                 plot_channel_radius_vs_soc, rank_by_abs_slope)
from battgen.batch import BatchFormatError, StructureBatch
from battgen.checkpoint import SigtermGuard, SigtermInterrupt, atomic_write_json
from battgen.contracts.si_anode import (  # noqa: F401 - re-exported: the si-anode file names and statuses
    CHECKPOINT_FILENAME, COMPOUNDS_FILENAME, CONFIGURATIONS_FILENAME, FIGURE_FILENAME, INPUT_FILENAME,
    RELAXED_FILENAME, SLOPES_FILENAME, SLOPES_TABLE_FILENAME, STATUSES, TABLE_FILENAME, TABLE_JSON_FILENAME,
    SiAnodeSettings,
)
from battgen.errors import InvalidInputError
from battgen.sources.files import read_input_batch
from battgen.electrochem.capacity import electrode_capacity
from battgen.progress import Bar

CHECKPOINT_FORMAT = "battgen.si_anode_checkpoint"

# Relax statuses whose configuration enters the fit (an exploded row keeps its unrelaxed start).
FIT_RELAX_STATUSES = ("converged", "not_converged")

# Declared once, with units and ranges, in battgen.contracts.si_anode.SiAnodeSettings.
SI_ANODE_DEFAULTS: dict[str, Any] = SiAnodeSettings.defaults()
# Settings that change results: a checkpoint written with other values cannot be continued.
_RESULT_KEYS = ("working_ion", "host_element", "min_capacity_mAh_per_g", "capacity_basis", "max_compounds",
                "max_sites", "primitive_cell", "n_configurations", "max_removed_fraction",
                "include_fully_lithiated", "seed", "mlip", "model_path", "fmax", "max_steps", "cell_filter",
                "optimizer", "maxstep", "max_volume_factor", "channel_options")
UNITS = {
    **SLOPE_UNITS,
    "gravimetric_capacity_mAh_per_g": "mAh/g (basis: capacity_basis)",
    "min_capacity_mAh_per_g": "mAh/g",
    "removed_fraction": "Li removed / Li of the fully lithiated compound (0-1)",
    "energy_eV": "eV", "energy_per_atom_eV": "eV/atom", "max_force_eV_per_A": "eV/Å", "fmax": "eV/Å",
    "maxstep": "Å", "volume_A3": "Å³", "volume_per_host_atom_A3": "Å³ per host-element atom",
    "volume_change": "V_final/V_initial of the relaxation", "wall_time_s": "s", "max_wall_time_s": "s",
}
# Per-configuration table columns (CSV and the AiiDA table), units in the names.
TABLE_COLUMNS = (
    "row_id", "compound_id", "compound_formula", "formula", "configuration_index", "state_of_charge",
    "removed_fraction",
    "n_working_ion", "n_working_ion_removed", "relax_status", "energy_per_atom_eV", "max_force_eV_per_A",
    "volume_A3", "volume_per_host_atom_A3", "gravimetric_capacity_mAh_per_g", "channel_radius_A",
    "largest_included_sphere_A", "channel_dimensionality", "used_in_fit", "note",
)


# --- 1. mining --------------------------------------------------------------------------------------
def compound_capacity_mAh_per_g(structure: Structure, working_ion: str = "Li", basis: str = "host") -> float:
    """Theoretical gravimetric capacity (mAh/g) of removing every ``working_ion`` from ``structure``; 0 without
    any (pymatgen InsertionElectrode through :func:`battgen.electrochem.capacity.electrode_capacity`)."""
    if structure.composition[Element(working_ion)] == 0:
        return 0.0
    return float(electrode_capacity(structure, working_ion, 1.0, basis=basis).gravimetric_mAh_per_g)


def mine_candidates(
    batch: StructureBatch, *, working_ion: str = "Li", host_element: str = "Si",
    min_capacity_mAh_per_g: float = 1500.0, basis: str = "host", max_sites: int | None = None,
    max_compounds: int | None = None,
) -> tuple[StructureBatch, list[dict[str, Any]]]:
    """(passed compounds with ``gravimetric_capacity_mAh_per_g``, one record per input row with its capacity,
    ``passed`` and the reason when rejected). Passed rows keep the input order; ``max_compounds`` keeps the
    first ones."""
    records, keep = [], []
    for meta, structure in batch:
        symbols = {el.symbol for el in structure.composition.elements}
        record: dict[str, Any] = {"row_id": meta["row_id"], "formula": structure.composition.reduced_formula,
                                  "n_sites": len(structure), "gravimetric_capacity_mAh_per_g": None,
                                  "passed": False, "reason": None}
        missing = sorted({working_ion, host_element} - symbols)
        if missing:
            record["reason"] = f"contains no {', '.join(missing)}"
        else:
            capacity = compound_capacity_mAh_per_g(structure, working_ion, basis)
            record["gravimetric_capacity_mAh_per_g"] = capacity
            if capacity < min_capacity_mAh_per_g:  # same bound as the work chain's shortlist (min_values)
                record["reason"] = f"capacity {capacity:.0f} mAh/g < {min_capacity_mAh_per_g:g} mAh/g"
            elif max_sites is not None and len(structure) > max_sites:
                record["reason"] = f"{len(structure)} sites > max_sites {max_sites}"
            elif max_compounds is not None and len(keep) >= max_compounds:
                record["reason"] = f"beyond max_compounds {max_compounds}"
            else:
                record["passed"] = True
                keep.append(len(records))
        records.append(record)
    passed = batch.select([r["passed"] for r in records])
    passed = passed.with_columns(gravimetric_capacity_mAh_per_g=[
        records[i]["gravimetric_capacity_mAh_per_g"] for i in keep])
    return passed, records


# --- 2. delithiation sampling -----------------------------------------------------------------------
def removal_counts(n_ion: int, n_configurations: int, max_removed_fraction: float = 1.0) -> list[int]:
    """Li removed in configurations 1..n: evenly spread up to ``max_removed_fraction`` × ``n_ion``, at least 1."""
    if n_ion < 1:
        raise ValueError("the compound has no working ion to remove")
    top = max_removed_fraction * n_ion
    return [min(n_ion, max(1, round(top * i / n_configurations))) for i in range(1, n_configurations + 1)]


def delithiated_configurations(
    structure: Structure, *, compound_id: str, compound_index: int = 0, working_ion: str = "Li",
    n_configurations: int = 30, max_removed_fraction: float = 1.0, seed: int = 0,
    include_fully_lithiated: bool = True,
) -> StructureBatch:
    """Configurations of one compound by random removal of ``working_ion`` (see the module docstring).

    Row ids ``<compound_id>/full`` and ``<compound_id>/d<NN>``; metadata: compound_id, configuration_index
    (0 = fully lithiated), state_of_charge, removed_fraction, n_working_ion, n_working_ion_removed,
    removed_site_indices (indices into ``structure``), sampling_seed.
    """
    ion_sites = [i for i, site in enumerate(structure) if site.specie.symbol == working_ion]
    n_ion = len(ion_sites)
    rows, structures = [], []
    common = {"compound_id": compound_id, "formula_full": structure.composition.reduced_formula,
              "n_working_ion": n_ion, "sampling_seed": int(seed)}
    if include_fully_lithiated:
        structures.append(structure.copy())
        rows.append({"row_id": f"{compound_id}/full", **common, "configuration_index": 0, "state_of_charge": 1.0,
                     "removed_fraction": 0.0, "n_working_ion_removed": 0, "removed_site_indices": []})
    for index, n_remove in enumerate(removal_counts(n_ion, n_configurations, max_removed_fraction), start=1):
        # One generator per (seed, compound, configuration): a configuration does not depend on the others.
        rng = np.random.default_rng([int(seed), int(compound_index), index])
        removed = sorted(int(i) for i in rng.choice(ion_sites, size=n_remove, replace=False))
        structures.append(RemoveSitesTransformation(removed).apply_transformation(structure))
        rows.append({"row_id": f"{compound_id}/d{index:02d}", **common, "configuration_index": index,
                     "state_of_charge": (n_ion - n_remove) / n_ion, "removed_fraction": n_remove / n_ion,
                     "n_working_ion_removed": n_remove, "removed_site_indices": removed})
    return StructureBatch(structures, rows)


# --- 3. per-configuration properties ------------------------------------------------------------------
def default_channel_radius(structure: Structure, working_ion: str, options: dict[str, Any]) -> dict[str, Any]:
    """Channel analysis of the framework without ``working_ion`` (``options`` go to ``analyze_channels``)."""
    from battgen.channels.analysis import analyze_channels

    result = analyze_channels(structure, **{"mobile_ion": working_ion, **options})
    return {"channel_radius_A": float(result.channel_radius_A),
            "largest_included_sphere_A": float(result.largest_included_sphere_A),
            "channel_dimensionality": int(result.channel_dimensionality)}


def configuration_properties(
    structure: Structure, *, working_ion: str, host_element: str, basis: str,
    channel_function: Callable[[Structure, str, dict[str, Any]], dict[str, Any]], channel_options: dict[str, Any],
) -> dict[str, Any]:
    """Capacity (of the Li left, mAh/g), volume and channel analysis of one (relaxed) configuration."""
    n_host = structure.composition[Element(host_element)]
    properties: dict[str, Any] = {
        "volume_A3": float(structure.volume),
        "volume_per_host_atom_A3": float(structure.volume / n_host) if n_host else None,
        "gravimetric_capacity_mAh_per_g": compound_capacity_mAh_per_g(structure, working_ion, basis),
        "channel_radius_A": None, "largest_included_sphere_A": None, "channel_dimensionality": None,
    }
    try:
        properties.update(channel_function(structure, working_ion, channel_options))
    except Exception as exc:  # noqa: BLE001 - one failed void analysis must not stop the other configurations
        properties["channel_note"] = f"channel analysis failed: {type(exc).__name__}: {exc}"
    return properties


# --- checkpoint ----------------------------------------------------------------------------------------
def settings_fingerprint(settings: dict[str, Any], compounds: StructureBatch) -> str:
    """Hash of what determines the results: result settings + the compounds' structures."""
    payload = {"settings": {k: settings[k] for k in _RESULT_KEYS},
               "compounds": [[m["row_id"], s.as_dict()["lattice"]["matrix"], [str(x.specie) for x in s],
                              np.round(s.frac_coords, 8).tolist()] for m, s in compounds]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def read_checkpoint(path: Path, fingerprint: str) -> dict[str, tuple[dict[str, Any], Structure]]:
    """Finished configurations of an earlier run (row_id -> (meta, relaxed structure)). A torn last line
    (killed mid-write) is ignored; a checkpoint of other settings raises InvalidInputError."""
    done: dict[str, tuple[dict[str, Any], Structure]] = {}
    if not path.exists():
        return done
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        return done
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        return done  # killed while writing the header: nothing finished yet
    if header.get("format") != CHECKPOINT_FORMAT:
        raise InvalidInputError(f"{path.name} is not a {CHECKPOINT_FORMAT} file")
    if header.get("fingerprint") != fingerprint:
        raise InvalidInputError(
            f"{path.name} was written with other settings or compounds; restore them or delete the checkpoint")
    for line in lines[1:]:
        try:
            record = json.loads(line)
            done[record["meta"]["row_id"]] = (record["meta"], Structure.from_dict(record["structure"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # the torn line of a kill
    return done


class _Checkpoint:
    """Append-only JSON lines, each flushed and fsynced before the next configuration starts."""

    def __init__(self, path: Path, fingerprint: str, fresh: bool) -> None:
        self.path = path
        if fresh or not path.exists() or not path.read_text(encoding="utf-8").strip():
            self._write_line({"format": CHECKPOINT_FORMAT, "version": 1, "fingerprint": fingerprint}, mode="w")
        elif not path.read_text(encoding="utf-8").endswith("\n"):
            with open(path, "a", encoding="utf-8") as handle:  # end the torn line so the next one parses
                handle.write("\n")

    def _write_line(self, payload: dict[str, Any], mode: str = "a") -> None:
        with open(self.path, mode, encoding="utf-8") as handle:
            handle.write(json.dumps(payload, default=_json_default) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def add(self, meta: dict[str, Any], structure: Structure) -> None:
        self._write_line({"meta": meta, "structure": structure.as_dict()})


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- the pipeline ----------------------------------------------------------------------------------------
def run_channel_stability(
    compounds: StructureBatch, settings: dict[str, Any], workdir: Path, *, calculator: Any = None,
    supported_elements: set[str] | None = None,
    channel_function: Callable[[Structure, str, dict[str, Any]], dict[str, Any]] = default_channel_radius,
) -> dict[str, Any]:
    """Sample, relax and analyse every configuration of ``compounds`` (already mined), with checkpointing;
    then fit, rank, write the table, slopes and figure. ``calculator`` replaces the MLIP (tests)."""
    from battgen.mlip.relax import RELAX_COLUMNS, load_relax_mlip, relax_structure

    started = time.perf_counter()
    ion, host, basis = settings["working_ion"], settings["host_element"], settings["capacity_basis"]
    configurations = StructureBatch.concatenate(
        delithiated_configurations(
            structure, compound_id=meta["row_id"], compound_index=index, working_ion=ion,
            n_configurations=settings["n_configurations"], max_removed_fraction=settings["max_removed_fraction"],
            seed=settings["seed"], include_fully_lithiated=settings["include_fully_lithiated"])
        for index, (meta, structure) in enumerate(compounds))
    configurations.write(workdir / CONFIGURATIONS_FILENAME)

    fingerprint = settings_fingerprint(settings, compounds)
    checkpoint_path = workdir / CHECKPOINT_FILENAME
    done = read_checkpoint(checkpoint_path, fingerprint) if settings["restart"] else {}
    checkpoint = _Checkpoint(checkpoint_path, fingerprint, fresh=not settings["restart"])

    model = None
    todo = [row_id for row_id in configurations.row_ids if row_id not in done]
    if todo and calculator is None:
        try:
            calculator, info = load_relax_mlip(settings["mlip"], settings["model_path"], settings["device"])
        except KeyError as exc:
            raise InvalidInputError(exc.args[0]) from exc
        supported_elements = set(info.supported_elements)
        model = info.as_dict()
        model.pop("supported_elements")

    status, stop_reason, n_this_call = "completed", None, 0
    bar = Bar(total=len(configurations), initial=len(configurations) - len(todo), unit="config",
              desc="si-anode relax + channels", disable=not settings["progress"])
    with SigtermGuard(interrupt=True) as sigterm:
        try:
            for meta, structure in configurations:
                if meta["row_id"] in done:
                    continue
                budget = settings["max_wall_time_s"]
                if budget is not None and n_this_call and time.perf_counter() - started > budget:
                    status, stop_reason = "incomplete", f"wall-time budget of {budget:g} s"
                    break
                bar.set_current(meta["row_id"])
                relaxed, record = relax_structure(
                    structure, calculator, supported_elements=supported_elements, fmax=settings["fmax"],
                    max_steps=settings["max_steps"], cell_filter=settings["cell_filter"],
                    optimizer=settings["optimizer"], maxstep=settings["maxstep"],
                    max_volume_factor=settings["max_volume_factor"])
                row = {**meta, **{key: record[key] for key in RELAX_COLUMNS},
                       "relax_wall_time_s": record["wall_time_s"]}
                row.update(configuration_properties(relaxed, working_ion=ion, host_element=host, basis=basis,
                                                    channel_function=channel_function,
                                                    channel_options=settings["channel_options"]))
                row = {key: _finite_or_none(value) for key, value in row.items()}
                checkpoint.add(row, relaxed)
                done[meta["row_id"]] = (row, relaxed)
                n_this_call += 1
                bar.update(1)
        except SigtermInterrupt:
            status, stop_reason = "incomplete", "SIGTERM (configuration in flight dropped)"
        sigterm.armed = False  # from here on a SIGTERM is only noted: the outputs below are quick
    bar.close()

    finished = [row_id for row_id in configurations.row_ids if row_id in done]
    relaxed_batch = StructureBatch([done[r][1] for r in finished], [done[r][0] for r in finished])
    tmp = workdir / (RELAXED_FILENAME + ".tmp")
    relaxed_batch.write(tmp)
    os.replace(tmp, workdir / RELAXED_FILENAME)

    table = configuration_table(relaxed_batch)
    _write_table(table, workdir)
    outputs: dict[str, Any] = {
        "status": status,
        "n_compounds": len(compounds),
        "n_configurations": len(configurations),
        "n_finished": len(finished),
        "n_relaxed_this_call": n_this_call,
        "n_resumed_from_checkpoint": len(finished) - n_this_call,
        "stop_reason": stop_reason,
        "relax_status_counts": _counts(r["relax_status"] for r in table),
        "model": model,
        "wall_time_s_this_call": round(time.perf_counter() - started, 3),
    }
    if status == "completed":
        slopes = compound_slopes(table)
        labels = {m["row_id"]: compound_label(s.composition.reduced_formula, m["row_id"]) for m, s in compounds}
        ranked = [entry["compound"] for entry in slopes["ranking"]]
        groups = group_points(*_fit_columns(table))
        plot_channel_radius_vs_soc({c: groups[c] for c in ranked}, slopes["fits"], workdir / FIGURE_FILENAME,
                                   labels=labels)
        _atomic_write_json(workdir / SLOPES_FILENAME, {**slopes, "units": UNITS})
        _write_slopes_table(slopes, labels, workdir / SLOPES_TABLE_FILENAME)
        outputs["ranking"] = slopes["ranking"]
    return outputs


def configuration_table(relaxed: StructureBatch) -> list[dict[str, Any]]:
    """One row per configuration with :data:`TABLE_COLUMNS` (units in the names); ``used_in_fit`` says
    whether it enters the slope (relaxed or not converged, and a channel radius)."""
    rows = []
    for meta, structure in relaxed:
        usable = meta.get("relax_status") in FIT_RELAX_STATUSES and meta.get("channel_radius_A") is not None
        notes = [n for n in (meta.get("relax_message"), meta.get("channel_note")) if n]
        rows.append({
            **{key: meta.get(key) for key in TABLE_COLUMNS},
            "compound_formula": meta.get("formula_full"),
            "formula": structure.composition.reduced_formula,
            "used_in_fit": bool(usable),
            "note": "; ".join(notes) or None,
        })
    return rows


def _fit_columns(table: Sequence[dict[str, Any]]) -> tuple[list[str], list[float], list[float | None], list[bool]]:
    return ([r["compound_id"] for r in table], [r["state_of_charge"] for r in table],
            [r["channel_radius_A"] for r in table], [r["used_in_fit"] for r in table])


def compound_slopes(table: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Fits per compound and the ranking by |slope| (see :mod:`battgen.anode.slope`)."""
    fits = fit_compounds(group_points(*_fit_columns(table)))
    return {"fits": fits, "ranking": rank_by_abs_slope(fits)}


def _counts(values) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[str(value)] = counts.get(str(value), 0) + 1
    return counts


def _atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_json(path, payload, default=_json_default)


SLOPES_TABLE_COLUMNS = ("rank", "compound", "formula", "slope_A_per_unit_soc", "slope_err_A_per_unit_soc",
                        "intercept_A", "pearson_r", "spearman_rho", "n_points", "reason")


def _write_slopes_table(slopes: dict[str, Any], labels: dict[str, str], path: Path) -> None:
    """The ranking as CSV (slopes in Å per unit SOC), the table people read first."""
    from battgen.report import write_csv

    rows = [{**slopes["fits"][entry["compound"]], **entry, "formula": labels.get(entry["compound"], "").split(" (")[0]}
            for entry in slopes["ranking"]]  # the label starts with the formula
    write_csv(rows, SLOPES_TABLE_COLUMNS, path)


def _write_table(table: list[dict[str, Any]], workdir: Path) -> None:
    tmp = workdir / (TABLE_FILENAME + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(TABLE_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)
    os.replace(tmp, workdir / TABLE_FILENAME)
    _atomic_write_json(workdir / TABLE_JSON_FILENAME, {"columns": list(TABLE_COLUMNS), "units": UNITS, "rows": table})


# --- the command ----------------------------------------------------------------------------------------
def validate_si_anode_config(config: dict[str, Any]) -> dict[str, Any]:
    """Config with defaults filled in (:class:`~battgen.contracts.si_anode.SiAnodeSettings`); raises
    InvalidInputError naming the bad key and its allowed range."""
    return SiAnodeSettings.settings_dict(config)


def read_compounds(settings: dict[str, Any], workdir: Path) -> StructureBatch:
    """The compounds: ``source`` (any file read_structures reads) when given, else the batch file ``input``."""
    from battgen.sources.files import SourceFormatError, read_structures

    if settings["source"]:
        path = Path(settings["source"])
        path = path if path.is_absolute() else workdir / path
        try:
            batch, _ = read_structures(path)
        except (SourceFormatError, BatchFormatError, OSError) as exc:
            raise InvalidInputError(f"cannot read the source {path.name}: {exc}") from exc
    else:
        try:
            batch = read_input_batch(workdir / settings["input"])
        except (BatchFormatError, OSError) as exc:
            raise InvalidInputError(f"cannot read the input batch {settings['input']}: {exc}") from exc
    if settings["primitive_cell"]:
        batch = StructureBatch([s.get_primitive_structure() for s in batch.structures], [dict(m) for m in batch.meta])
    return batch


def run_si_anode_command(config: dict[str, Any], workdir: Path, calculator: Any = None,
                         channel_function: Callable[..., dict[str, Any]] = default_channel_radius) -> dict[str, Any]:
    """``battgen si-anode``: mine, sample, relax, analyse, fit; writes :data:`COMPOUNDS_FILENAME`,
    :data:`CONFIGURATIONS_FILENAME`, :data:`CHECKPOINT_FILENAME`, :data:`RELAXED_FILENAME`, the table
    (:data:`TABLE_FILENAME`, :data:`TABLE_JSON_FILENAME`) and, once complete, :data:`SLOPES_FILENAME`,
    :data:`SLOPES_TABLE_FILENAME` and :data:`FIGURE_FILENAME`. ``calculator`` / ``channel_function`` replace
    the MLIP / the void analysis (cheap stand-ins in tests)."""
    settings = validate_si_anode_config(config)
    workdir = Path(workdir)
    compounds = read_compounds(settings, workdir)
    if settings["model_path"] and not Path(settings["model_path"]).expanduser().exists():
        raise InvalidInputError(f"model_path {settings['model_path']} does not exist")
    passed, records = mine_candidates(
        compounds, working_ion=settings["working_ion"], host_element=settings["host_element"],
        min_capacity_mAh_per_g=settings["min_capacity_mAh_per_g"], basis=settings["capacity_basis"],
        max_sites=settings["max_sites"], max_compounds=settings["max_compounds"])
    _atomic_write_json(workdir / COMPOUNDS_FILENAME,
                       {"units": UNITS, "basis": settings["capacity_basis"], "compounds": records})
    if len(passed) == 0:
        raise InvalidInputError(
            f"no compound of {len(compounds)} contains {settings['working_ion']} and {settings['host_element']} with "
            f"a capacity above {settings['min_capacity_mAh_per_g']:g} mAh/g ({settings['capacity_basis']} basis)")
    outputs = run_channel_stability(passed, settings, workdir, calculator=calculator, channel_function=channel_function,
                                    supported_elements=None if calculator is None else set(
                                        el.symbol for el in Element))
    files = {"compounds": COMPOUNDS_FILENAME, "configurations": CONFIGURATIONS_FILENAME,
             "checkpoint": CHECKPOINT_FILENAME, "relaxed": RELAXED_FILENAME, "table": TABLE_FILENAME,
             "table_json": TABLE_JSON_FILENAME}
    if outputs["status"] == "completed":
        files.update(slopes=SLOPES_FILENAME, slopes_table=SLOPES_TABLE_FILENAME, figure=FIGURE_FILENAME)
    return {
        "files": files,
        "n_input_compounds": len(compounds),
        "n_candidates": len(passed),
        **outputs,
        "settings": {k: settings[k] for k in _RESULT_KEYS},
        "units": UNITS,
    }
