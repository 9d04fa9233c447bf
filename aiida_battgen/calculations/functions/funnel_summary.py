"""``battgen.funnel_summary``: the discovery funnel (rows left after each step), computed from the batches."""

from collections import Counter

from aiida import orm
from aiida.engine import calcfunction

from aiida_battgen.data.batch import StructureBatchData

# Stage order of a discovery run; inputs may be any subset.
FUNNEL_STAGES = (
    "seed_structures", "generated", "valid_structure", "charge_neutral", "unique", "novel",
    "property_screened", "preselected", "relaxed", "shortlisted",
)


@calcfunction
def funnel_summary(**stages: StructureBatchData):
    """Counts (number of structures) per stage, in discovery order; ``relaxed`` also counts converged rows."""
    unknown = set(stages) - set(FUNNEL_STAGES)
    if unknown:
        raise ValueError(f"unknown funnel stage(s) {sorted(unknown)}; known: {FUNNEL_STAGES}")
    wrong = {label: type(node).__name__ for label, node in stages.items() if not isinstance(node, StructureBatchData)}
    if wrong:
        raise TypeError(f"funnel stage(s) {wrong} are not structure batches (battgen.structure_batch)")
    counts = {}
    for stage in (s for s in FUNNEL_STAGES if s in stages):
        counts[stage] = stages[stage].n_rows
        if stage == "relaxed":
            counts["relaxed_converged"] = sum(
                1 for meta in stages["relaxed"].get_batch().meta if meta.get("relax_status") == "converged"
            )
    # Which generator each surviving row came from, per stage (rows without a `generator` count as "none").
    by_generator = {}
    for stage in (s for s in FUNNEL_STAGES if s in stages and s != "seed_structures"):
        by_generator[stage] = dict(Counter(m.get("generator") or "none" for m in stages[stage].get_batch().meta))
    return orm.Dict({"stages": list(counts), "counts": counts, "by_generator": by_generator})
