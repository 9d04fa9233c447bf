"""Provenance queries: the full lineage of a shortlisted candidate, and candidates by criteria."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiida import orm
from aiida.common.links import LinkType

# Steps every candidate of a discovery run passes through (process labels, newest first).
DISCOVERY_STEPS = (
    "extract_structure",
    "shortlist",
    "energy_above_hull",
    "MlipRelaxCalculation",
    "screen_novelty",
    "screen_uniqueness",
    "screen_charge_neutrality",
    "screen_validity",
)


@dataclass
class LineageStep:
    pk: int
    process_label: str
    call_link_label: str | None
    exit_status: int | None
    ctime: str
    inputs: dict[str, str] = field(default_factory=dict)  # link label -> "Type<pk> (n rows)"


@dataclass
class Lineage:
    candidate_pk: int
    steps: list[LineageStep]
    sources: list[str]  # data nodes without a creator: snapshots, seed batches, parameters

    @property
    def process_labels(self) -> list[str]:
        return [step.process_label for step in self.steps]

    def missing_steps(self, expected: tuple[str, ...] = DISCOVERY_STEPS) -> list[str]:
        labels = set(self.process_labels)
        return [label for label in expected if label not in labels]

    def as_text(self) -> str:
        lines = [f"Lineage of candidate <{self.candidate_pk}> (newest first):"]
        for step in self.steps:
            inputs = ", ".join(f"{k}={v}" for k, v in sorted(step.inputs.items()))
            link = f" [{step.call_link_label}]" if step.call_link_label else ""
            lines.append(f"  {step.process_label}<{step.pk}>{link} exit={step.exit_status}  <- {inputs}")
        lines.append("  sources: " + ", ".join(self.sources))
        return "\n".join(lines)


def _describe(node: orm.Node) -> str:
    text = f"{type(node).__name__}<{node.pk}>"
    n_rows = node.base.attributes.get("n_rows", None) if isinstance(node, orm.Data) else None
    return f"{text} ({n_rows} rows)" if n_rows is not None else text


def _call_link_label(process: orm.ProcessNode) -> str | None:
    callers = process.base.links.get_incoming(link_type=(LinkType.CALL_CALC, LinkType.CALL_WORK)).all()
    return callers[0].link_label if callers else None


def candidate_lineage(candidate: orm.Node | int) -> Lineage:
    """Walk the data provenance back from ``candidate`` to nodes that no process created."""
    node = orm.load_node(candidate) if isinstance(candidate, int) else candidate
    seen_processes: dict[int, LineageStep] = {}
    sources: dict[int, str] = {}
    frontier: list[orm.Node] = [node]
    seen_data: set[int] = set()
    while frontier:
        data = frontier.pop()
        if data.pk in seen_data:
            continue
        seen_data.add(data.pk)
        creators = data.base.links.get_incoming(link_type=LinkType.CREATE).all()
        if not creators:
            sources[data.pk] = _describe(data)
            continue
        process = creators[0].node
        if process.pk in seen_processes:
            continue
        step = LineageStep(
            pk=process.pk, process_label=process.process_label or type(process).__name__,
            call_link_label=_call_link_label(process), exit_status=process.exit_status,
            ctime=process.ctime.isoformat(),
        )
        for link in process.base.links.get_incoming(link_type=LinkType.INPUT_CALC).all():
            if isinstance(link.node, orm.AbstractCode):
                step.inputs[link.link_label] = f"Code<{link.node.pk}> {link.node.full_label}"
                continue
            step.inputs[link.link_label] = _describe(link.node)
            frontier.append(link.node)
        seen_processes[process.pk] = step
    steps = sorted(seen_processes.values(), key=lambda s: s.ctime, reverse=True)
    return Lineage(candidate_pk=node.pk, steps=steps, sources=[sources[pk] for pk in sorted(sources)])


def find_candidates(
    max_e_above_hull: float | None = None,
    elements: list[str] | None = None,
    generator: str | None = None,
    group_label: str | None = None,
) -> list[dict[str, Any]]:
    """Shortlisted candidates (outputs of ``extract_structure``) matching the criteria, best E_hull first.

    ``max_e_above_hull`` in eV/atom; ``elements``: all must be present.
    """
    builder = orm.QueryBuilder()
    builder.append(orm.CalcFunctionNode, filters={"attributes.process_label": "extract_structure"}, tag="calc")
    property_filters = {}
    if max_e_above_hull is not None:
        property_filters["attributes.e_above_hull_eV_per_atom"] = {"<=": max_e_above_hull}
    if generator is not None:
        property_filters["attributes.generator"] = generator
    builder.append(orm.Dict, with_incoming="calc", edge_filters={"label": "properties"},
                   filters=property_filters, project=["attributes"], tag="properties")
    builder.append(orm.StructureData, with_incoming="calc", edge_filters={"label": "structure"},
                   project=["id"], tag="structure")
    if group_label is not None:
        builder.append(orm.Group, with_node="structure", filters={"label": group_label})
    wanted = set(elements or [])
    rows = []
    for properties, structure_pk in builder.all():
        if wanted and not wanted.issubset(properties.get("elements", [])):
            continue
        rows.append({"structure_pk": structure_pk, **properties})
    rows.sort(key=lambda r: (r.get("e_above_hull_eV_per_atom") is None, r.get("e_above_hull_eV_per_atom") or 0.0))
    return rows
