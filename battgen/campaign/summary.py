"""The campaign summary from plain data: funnel per round, loop statistics and per-candidate results.

Pure functions (no aiida): ``aiida_battgen``'s ``campaign_summary`` calcfunction feeds them the batches of
each round. Units are in the key names; hit rates are survivors per 1,000 samples.
"""

from __future__ import annotations

import re
from typing import Any

from battgen.batch import StructureBatch

CANDIDATE_COLUMNS = (
    "round", "rank", "output_label", "row_id", "reduced_formula", "generator", "new_in_round",
    "e_above_hull_eV_per_atom", "energy_per_atom_eV", "formation_energy_per_atom_eV",
    "gravimetric_capacity_mAh_per_g", "volumetric_capacity_Ah_per_L", "insertion_voltage_V",
    "dft_formation_energy_eV_per_atom", "nearest_known_compound",
)
ROUND_COLUMNS = ("round", "samples", "survivors", "new_survivors", "hit_rate_per_1000", "new_hit_rate_per_1000",
                 "novelty_vs_earlier_rounds")


def output_label(row_id: str, rank: int, round_index: int) -> str:
    """The campaign's port name of a shortlisted row (the discovery's ``rank_NNN_<row id>``, round-prefixed)."""
    return f"r{round_index:02d}_rank_{rank:03d}_" + re.sub(r"[^A-Za-z0-9_]", "_", row_id)


def hit_rate_per_1000(survivors: int, samples: int) -> float | None:
    return round(1000.0 * survivors / samples, 3) if samples else None


def round_statistics(index: int, generated: StructureBatch | None, shortlist: StructureBatch | None,
                     new: StructureBatch | None) -> dict[str, Any]:
    samples = len(generated) if generated is not None else 0
    survivors = len(shortlist) if shortlist is not None else 0
    fresh = len(new) if new is not None else 0
    by_generator: dict[str, dict[str, int]] = {}
    for batch, key in ((generated, "samples"), (shortlist, "survivors"), (new, "new_survivors")):
        for meta in (batch.meta if batch is not None else []):
            name = meta.get("generator") or "none"
            by_generator.setdefault(name, {"samples": 0, "survivors": 0, "new_survivors": 0})[key] += 1
    for counts in by_generator.values():
        counts["hit_rate_per_1000"] = hit_rate_per_1000(counts["survivors"], counts["samples"])
    return {"round": index, "samples": samples, "survivors": survivors, "new_survivors": fresh,
            "hit_rate_per_1000": hit_rate_per_1000(survivors, samples),
            "new_hit_rate_per_1000": hit_rate_per_1000(fresh, samples),
            "novelty_vs_earlier_rounds": round(fresh / survivors, 4) if survivors else None,
            "by_generator": by_generator}


def best_insertion_voltage(summary: dict[str, Any]) -> float | None:
    """The highest insertion voltage (V) over the site types of ``battgen insertion``'s summary: the
    most favourable site (lowest insertion energy per ion)."""
    values = [_number(row.get("voltage_V")) for row in summary.get("voltages_V") or []]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def build_summary(parameters: dict[str, Any], rounds: dict[int, dict[str, Any]],
                  capacities: dict[int, StructureBatch] | None = None, voltages: dict[str, dict] | None = None,
                  dft: dict[str, float] | None = None) -> dict[str, Any]:
    """The whole summary: ``rounds`` maps round index -> {generated, shortlist, new (batches), funnel (dict)}."""
    capacities, voltages, dft = capacities or {}, voltages or {}, dft or {}
    statistics, candidates, funnels = [], [], {}
    for index in sorted(rounds):
        entry = rounds[index]
        statistics.append(round_statistics(index, entry.get("generated"), entry.get("shortlist"), entry.get("new")))
        funnels[f"round_{index:02d}"] = (entry.get("funnel") or {}).get("counts", {})
        new_ids = set(entry["new"].row_ids) if entry.get("new") is not None else set()
        capacity = {}
        if index in capacities:
            capacity = {m["row_id"]: m for m in capacities[index].meta}
        shortlist = entry.get("shortlist")
        for meta, structure in (zip(shortlist.meta, shortlist.structures) if shortlist is not None else []):
            label = output_label(meta["row_id"], int(meta.get("rank", 0)), index)
            cap = capacity.get(meta["row_id"], {})
            voltage = voltages.get(label, {})
            candidates.append({
                "round": index, "rank": meta.get("rank"), "output_label": label, "row_id": meta["row_id"],
                "reduced_formula": meta.get("reduced_formula") or structure.composition.reduced_formula,
                "generator": meta.get("generator"),
                "new_in_round": meta["row_id"] in new_ids,
                "e_above_hull_eV_per_atom": _number(meta.get("e_above_hull_eV_per_atom")),
                "energy_per_atom_eV": _number(meta.get("energy_per_atom_eV")),
                "formation_energy_per_atom_eV": _number(meta.get("formation_energy_per_atom_eV")),
                "gravimetric_capacity_mAh_per_g": _number(cap.get("gravimetric_capacity_mAh_per_g")),
                "volumetric_capacity_Ah_per_L": _number(cap.get("volumetric_capacity_Ah_per_L")),
                "insertion_voltage_V": best_insertion_voltage(voltage),
                "dft_formation_energy_eV_per_atom": dft.get(label),
                "nearest_known_compound": meta.get("nearest_known_compound"),
            })
    last = funnels[f"round_{max(rounds):02d}"] if rounds else {}
    total_samples = sum(s["samples"] for s in statistics)
    total_new = sum(s["new_survivors"] for s in statistics)
    return {
        **{key: parameters.get(key) for key in ("name", "shortlist_group", "stages", "models") if key in parameters},
        "n_rounds": len(statistics),
        "funnel": last,
        "funnels": funnels,
        "rounds": statistics,
        "totals": {"samples": total_samples, "distinct_survivors": total_new,
                   "hit_rate_per_1000": hit_rate_per_1000(total_new, total_samples)},
        "candidates": candidates,
        "candidate_columns": list(CANDIDATE_COLUMNS),
    }
