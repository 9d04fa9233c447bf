"""From a validated campaign spec to a ``battgen.campaign`` builder: labels resolved, nothing stored.

Every check that can fail runs here, before anything is stored: codes by label per stage, model references
(pk, UUID or label) and model directories, the source (built-in host names, a file, a snapshot node, an MP
key from the environment), the DFT family, the hull reference. ``resolve_campaign(..., dry_run=True)``
returns the plan only (stages, codes, model reuse, expected counts) and never stores a node: the known-
materials reference and a live MP query are left for the real run.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiida import orm

from battgen.campaign.spec import TRAINABLE_GENERATORS, CampaignSpec, CampaignSpecError, load_spec


@dataclass
class CampaignPlan:
    spec: CampaignSpec
    builder: Any = None
    lines: list[str] = field(default_factory=list)
    reuse: dict[str, int | None] = field(default_factory=dict)  # generator -> reused model pk (None: train)

    def as_text(self) -> str:
        return "\n".join(self.lines)


def _load_by_ref(ref: str | int, cls: type, what: str, where: str) -> orm.Node:
    """A stored node of type ``cls`` by pk, UUID or label; one-line error otherwise."""
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    node = None
    text = str(ref)
    if text.isdigit() or len(text) >= 8:
        try:
            node = orm.load_node(int(text) if text.isdigit() else text)
        except (NotExistent, MultipleObjectsError, ValueError):
            node = None
    if node is None:
        found = orm.QueryBuilder().append(cls, filters={"label": text}).all(flat=True)
        if len(found) > 1:
            raise CampaignSpecError(f"`{where}`: {len(found)} {what} nodes are labelled {text!r}; give a pk or UUID")
        node = found[0] if found else None
    if node is None or not isinstance(node, cls):
        raise CampaignSpecError(f"`{where}`: no {what} with pk, UUID or label {text!r}")
    return node


def _load_code(label: str, where: str) -> orm.AbstractCode:
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    try:
        return orm.load_code(label)
    except (NotExistent, MultipleObjectsError, ValueError) as exc:
        raise CampaignSpecError(f"`{where}`: no code {label!r} ({type(exc).__name__}); list codes with "
                                "`verdi code list`") from None


def resolve_codes(spec: CampaignSpec) -> dict[str, orm.AbstractCode]:
    codes = {"default": _load_code(spec.codes.default, "codes.default")}
    for stage in ("train", "generate", "predict", "relax", "battery"):
        label = getattr(spec.codes, stage)
        if label:
            codes[stage] = _load_code(label, f"codes.{stage}")
    if spec.dft.enabled:
        codes["dft"] = _load_code(spec.dft.code, "dft.code")
    return codes


def _source_inputs(spec: CampaignSpec, dry_run: bool, base_dir: Path) -> tuple[dict[str, Any], str]:
    """``seed_structures`` or ``snapshot`` for the builder, and a line describing the source."""
    from aiida_battgen.data.batch import StructureBatchData
    from aiida_battgen.data.snapshot import SourceSnapshotData

    source = spec.source
    if source.kind == "builtin_hosts":
        from aiida_battgen.tools.demo import primitive_builtin_hosts
        from battgen.sources.builtin_hosts import builtin_host_names, builtin_hosts

        unknown = sorted(set(source.hosts or []) - set(builtin_host_names()))
        if unknown:
            raise CampaignSpecError(f"`source.hosts`: unknown built-in host(s) {unknown}; known: "
                                    f"{', '.join(builtin_host_names())}")
        batch = primitive_builtin_hosts(source.hosts) if source.primitive else builtin_hosts(source.hosts)
        if source.max_rows:
            batch = batch.select([index < source.max_rows for index in range(len(batch))])
        node = StructureBatchData(batch)
        node.label = f"built-in battery hosts{' (primitive cells)' if source.primitive else ''}"
        return {"seed_structures": node}, f"source: {len(batch)} built-in hosts"
    if source.kind == "file":
        path = (base_dir / source.path).resolve() if not Path(source.path).is_absolute() else Path(source.path)
        try:
            node = SourceSnapshotData.from_file(path)
        except ValueError as exc:
            raise CampaignSpecError(f"`source.path`: {exc}") from None
        return {"snapshot": node}, f"source: file {path} ({node.n_records} records)"
    if source.snapshot is not None:
        node = _load_by_ref(source.snapshot, orm.SinglefileData, "snapshot (SinglefileData)", "source.snapshot")
        return {"snapshot": node}, f"source: snapshot <{node.pk}> {node.label or node.filename}"
    # materials_project without a snapshot: a live query with the key from the environment
    key = os.environ.get(source.api_key_env)
    if not key:
        raise CampaignSpecError(f"`source`: a Materials Project source needs an API key in ${source.api_key_env} "
                                "or a stored `source.snapshot`")
    from battgen.sources.materials_project import MPQuery, query_materials_project, write_snapshot

    try:
        query = MPQuery(**source.criteria)
    except (TypeError, ValueError) as exc:
        raise CampaignSpecError(f"`source.criteria`: {exc}") from None
    if dry_run:
        return {}, f"source: Materials Project query {source.criteria} (run at launch; key from ${source.api_key_env})"
    records, version = query_materials_project(query, api_key=key)
    path = Path(tempfile.mkdtemp(prefix="battgen-campaign-")) / "mp_snapshot.jsonl.gz"
    write_snapshot(records, path, query, version)
    return {"snapshot": SourceSnapshotData.from_file(path)}, f"source: Materials Project {version}, {len(records)} records"


def _model_node(name: str, generator, base_dir: Path, where: str):
    from aiida_battgen.data.model import ModelData

    if generator.model is not None:
        model = _load_by_ref(generator.model, ModelData, "battgen.model", f"{where}.model")
    else:
        path = Path(generator.model_dir)
        path = path if path.is_absolute() else base_dir / path
        try:
            model = ModelData.from_directory(path)
        except Exception as exc:  # noqa: BLE001 - missing directory, bad manifest: one line
            raise CampaignSpecError(f"`{where}.model_dir`: {exc}") from None
    return model


def _check_protocols(spec: CampaignSpec) -> None:
    """The children's own protocols accept what the spec asks of them (unknown keys, protocol names)."""
    from aiida_battgen.workchains.discovery import DiscoveryWorkChain
    from aiida_battgen.workchains.property_screen import PropertyScreenWorkChain
    from aiida_battgen.workchains.protocols.utils import UnknownProtocolKeyError

    try:
        DiscoveryWorkChain.get_protocol_inputs("fast", {**spec.discovery_overrides(), "known_materials": None})
    except (UnknownProtocolKeyError, ValueError) as exc:
        raise CampaignSpecError(f"the discovery protocol refuses the spec: {exc}") from None
    if spec.property_screen is not None and spec.property_screen.enabled:
        try:
            PropertyScreenWorkChain.get_protocol_inputs(spec.property_screen.protocol, spec.property_screen.overrides)
        except (UnknownProtocolKeyError, ValueError) as exc:
            raise CampaignSpecError(f"`property_screen`: {exc}") from None


def resolve_campaign(spec: CampaignSpec | str | Path, dry_run: bool = False, base_dir: Path | None = None) -> CampaignPlan:
    """Resolve every label of ``spec``; the plan holds a filled builder (``None`` on a dry run)."""
    from aiida_battgen.workchains.campaign import CampaignWorkChain, find_trained_model

    if not isinstance(spec, CampaignSpec):
        base_dir = base_dir or Path(spec).resolve().parent
        spec = load_spec(spec)
    base_dir = base_dir or Path.cwd()
    plan = CampaignPlan(spec=spec)
    codes = resolve_codes(spec)
    source, source_line = _source_inputs(spec, dry_run, base_dir)
    generator_models = {}
    for name, generator in spec.generators.items():
        if name in TRAINABLE_GENERATORS and generator.train is None:
            model = _model_node(name, generator, base_dir, f"generators.{name}")
            if model.architecture != {"cdvae": "cdvae", "llm": "crystal-llm"}.get(name, name):
                raise CampaignSpecError(f"`generators.{name}.model`: battgen.model<{model.pk}> is a "
                                        f"{model.architecture!r} model")
            generator_models[name] = model
    predictor_models = {}
    if spec.property_screen is not None and spec.property_screen.enabled:
        for label, ref in spec.property_screen.models.items():
            predictor_models[label] = _model_node(label, ref, base_dir, f"property_screen.models.{label}")
    entries = None
    if spec.hull.reference == "entries":
        entries = _load_by_ref(spec.hull.entries, orm.SinglefileData, "entries (SinglefileData)", "hull.entries")
    if spec.dft.enabled:
        found = orm.QueryBuilder().append(orm.Group, filters={"label": spec.dft.family}).count()
        if not found:
            raise CampaignSpecError(f"`dft.family`: no pseudopotential / POTCAR family {spec.dft.family!r} "
                                    "(aiida-pseudo: `aiida-pseudo list`)")

    _check_protocols(spec)
    plan.lines.append(f"campaign {spec.name!r}: stages {' -> '.join(spec.stages())}")
    plan.lines.append(source_line)
    plan.lines.append("codes: " + ", ".join(f"{stage}={code.full_label}" for stage, code in codes.items()))
    training = source.get("seed_structures")
    for name in spec.trained_here():
        model = find_trained_model(training, spec.training_parameters(name)) if training is not None else None
        plan.reuse[name] = model.pk if model is not None else None
        plan.lines.append(f"generator {name}: " + (f"reuse battgen.model<{model.pk}> (same data and settings)"
                                                   if model is not None else "train here"))
    for name, model in generator_models.items():
        plan.lines.append(f"generator {name}: battgen.model<{model.pk if model.is_stored else 'from ' + str(spec.generators[name].model_dir)}>")
    counts = spec.expected_counts()
    plan.lines.append("expected (at most, per round): " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    if dry_run:
        return plan

    builder = CampaignWorkChain.get_builder()
    builder.spec = orm.Dict(spec.model_dump(mode="json"))
    builder.codes = codes
    for key, value in source.items():
        builder[key] = value
    if generator_models:
        builder.generator_models = generator_models
    if predictor_models:
        builder.predictor_models = predictor_models
    if entries is not None:
        builder.hull_reference_entries = entries
    if spec.hull.reference == "known_materials":
        from aiida_battgen.data.known_materials import known_materials_node

        builder.known_materials = known_materials_node()
    builder.metadata.label = f"campaign {spec.name}"
    plan.builder = builder
    return plan


# Node types whose files are licensed bodies (aiida-vasp's POTCAR files): never in a campaign archive.
LICENSED_NODE_TYPES = ("data.vasp.potcar_file.", "data.vasp.potcar.PotcarFileData.")
SECRET_ENVIRONMENT = ("MP_API_KEY", "PMG_MAPI_KEY")


def export_campaign(node: orm.WorkflowNode, path: str | Path) -> dict[str, Any]:
    """The campaign and its whole lineage (default traversal rules: inputs back to the sources, created
    outputs, the shortlist group) in one AiiDA archive; checked afterwards for licensed POTCAR bodies and
    for the MP key of the environment (the archive is deleted when either is found)."""
    from aiida.tools.archive import create_archive
    from aiida.tools.archive.abstract import get_format

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; choose another file name")
    entities: list[Any] = [node]
    group_label = node.outputs.summary.get("shortlist_group") if "summary" in node.outputs else None
    if group_label:
        found = orm.QueryBuilder().append(orm.Group, filters={"label": group_label}).first(flat=True)
        if found is not None:
            entities.append(found)
    create_archive(entities, filename=str(path))
    secrets = [os.environ[name] for name in SECRET_ENVIRONMENT if os.environ.get(name)]
    problems = []
    with get_format().open(path, "r") as reader:
        query = reader.querybuilder().append(orm.Node, project=["node_type", "attributes", "uuid"])
        n_nodes = 0
        for node_type, attributes, uuid in query.iterall():
            n_nodes += 1
            if node_type.startswith(LICENSED_NODE_TYPES):
                problems.append(f"licensed POTCAR body in node {uuid}")
            text = str(attributes)
            if any(secret in text for secret in secrets):
                problems.append(f"an API key in the attributes of node {uuid}")
    if problems:
        path.unlink()
        raise ValueError(f"refusing to write {path}: " + "; ".join(problems[:3]))
    return {"path": path, "n_nodes": n_nodes}
