"""The metadata columns each discovery step adds to a batch's rows, declared before any row exists.

A selection (``sort_by``, ``max_values``, ``min_values``, ``equals``) names columns; a typo there would
silently empty a shortlist, so the work chain checks the names at submit against what the steps upstream
can produce. Columns whose name depends on a trained model are given by prefix. This module imports
nothing heavy (the AiiDA layer reads it without ASE or torch).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# battgen.generate.substitution.SubstitutionGenerator.generate (per-row keys).
SUBSTITUTION_COLUMNS = (
    "row_id", "generator", "parent_row_id", "parent_formula", "substitution", "substitution_species",
    "substitution_probability", "substitution_rank_in_parent", "oxidation_state_source", "formula",
    "volume_rule", "volume_ratio_to_parent",
)
# battgen.generate.cdvae.CdvaeGenerator.generate; property heads add predicted_<property> (model-dependent).
CDVAE_COLUMNS = (
    "row_id", "generator", "parent_row_id", "model_sha256", "conditions", "langevin_steps",
    "langevin_n_step_each", "langevin_step_lr_A2", "sampling_seed", "n_rejected_missing_required_elements",
    "n_resample_rounds", "n_unfilled_rows", "sampling_time_s", "sample_round",
)
# battgen.generate.llm.CrystalLLMGenerator.generate; prompt targets add target_<property>.
LLM_COLUMNS = (
    "row_id", "generator", "parent_row_id", "infill_masked_element", "infill_proposed_element", "model_sha256",
    "prompt_task", "sample_index", "formula", "target_formula", "required_elements", "forbidden_elements",
    "temperature", "top_p",
)
GENERATOR_COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # name -> (names, prefixes)
    "substitution": (SUBSTITUTION_COLUMNS, ()),
    "cdvae": (CDVAE_COLUMNS, ("predicted_",)),
    "llm": (LLM_COLUMNS, ("target_",)),
}
# battgen.mlip.relax.relax_structure's record, copied onto every relaxed row.
RELAX_COLUMNS = (
    "energy_eV", "energy_per_atom_eV", "max_force_eV_per_A", "n_steps", "converged", "relax_status",
    "volume_change", "relax_message",
)
# battgen.known_materials.annotate_against_known: the known-materials hull's flags (E_hull itself is an annotation column).
KNOWN_MATERIALS_HULL_COLUMNS = (
    "hull_incomplete", "hull_incomplete_reason", "hull_n_competing_compounds", "nearest_known_compound",
    "relaxed_matches_known",
)
# battgen.select.select_rows: the rank (1 = best) of a selected row.
SELECTION_COLUMNS = ("rank",)
# battgen.predictors (predicted_<target>, predicted_by) and the property screen's derived columns.
PROPERTY_SCREEN_COLUMNS = ("predicted_by", "gravimetric_capacity_mAh_per_g", "volumetric_capacity_Ah_per_L")
PROPERTY_SCREEN_PREFIXES = ("predicted_",)


@dataclass(frozen=True)
class AvailableColumns:
    """Exact column names plus name prefixes (model-dependent columns) a batch's rows can carry."""

    names: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    def __contains__(self, column: object) -> bool:
        return isinstance(column, str) and (column in self.names or column.startswith(self.prefixes))

    def __or__(self, other: AvailableColumns) -> AvailableColumns:
        return AvailableColumns(self.names | other.names, tuple(dict.fromkeys(self.prefixes + other.prefixes)))

    def describe(self) -> str:
        text = ", ".join(sorted(self.names))
        return text + (f" (and any column starting with {', '.join(self.prefixes)})" if self.prefixes else "")


def columns(names: Iterable[str] = (), prefixes: Iterable[str] = ()) -> AvailableColumns:
    return AvailableColumns(frozenset(names), tuple(prefixes))


def generated_columns(generators: Iterable[str]) -> AvailableColumns:
    """Columns every row of a run's generators carries (the intersection: a column only one generator
    writes would drop the other generators' rows in a selection)."""
    chosen = [GENERATOR_COLUMNS[name] for name in generators]
    if not chosen:
        return AvailableColumns()
    names = frozenset.intersection(*(frozenset(n) for n, _ in chosen))
    prefixes = tuple(p for p in chosen[0][1] if all(p in other for _, other in chosen[1:]))
    return AvailableColumns(names, prefixes)


@dataclass
class SelectionColumnProblem:
    key: str  # e.g. "max_values.e_above_hull"
    column: str


def unknown_selection_columns(settings: dict, available: AvailableColumns) -> list[SelectionColumnProblem]:
    """Columns named by a selection (``sort_by`` and the keys of ``max_values``/``min_values``/``equals``)
    that no upstream step produces."""
    named: list[tuple[str, str]] = []
    if settings.get("sort_by") is not None:
        named.append(("sort_by", settings["sort_by"]))
    for key in ("max_values", "min_values", "equals"):
        named += [(f"{key}.{column}", column) for column in (settings.get(key) or {})]
    return [SelectionColumnProblem(key, column) for key, column in named if column not in available]


__all__ = [
    "AvailableColumns", "GENERATOR_COLUMNS", "KNOWN_MATERIALS_HULL_COLUMNS", "PROPERTY_SCREEN_COLUMNS", "PROPERTY_SCREEN_PREFIXES", "RELAX_COLUMNS",
    "SELECTION_COLUMNS", "columns", "generated_columns", "unknown_selection_columns",
]
