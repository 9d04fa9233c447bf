"""The campaign spec: one YAML file from a chemistry to ranked, checked battery candidates (issue 15).

A typed schema (pydantic, ``extra="forbid"`` everywhere): a key the schema does not define is refused with
its dotted path (``generators.cdvae.trian``), values are checked by type and range, and units are in the key
names (``fmax_eV_per_A``, ``max_e_above_hull_eV_per_atom``). Plain Python: no aiida import; the AiiDA layer
(``aiida_battgen.workchains.campaign``) resolves labels (codes, models, snapshots) and builds the work chains.

Top level::

    name: my-campaign
    seed: 2024
    codes: {default: battgen@localhost, train: battgen@gpu, relax: battgen@cpu}   # by label, per stage
    source: {kind: builtin_hosts | materials_project | snapshot | file, ...}
    dataset: {filter: {preset: tmo}, split: {fractions: [0.6, 0.2, 0.2], seed: 0}}
    generators: {substitution: {n: 300}, cdvae: {n: 1000, train: {...}}, llm: {n: 1000, model: 1234}}
    screening / property_screen / relax / hull / dft / battery / report / loop
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Generators the discovery runs (battgen.discovery): substitution as a calcfunction, the others from a model.
TRAINABLE_GENERATORS = ("cdvae", "llm")
UNTRAINED_GENERATORS = ("substitution",)
STAGES = ("source", "train", "generate", "screening", "property_screen", "relax", "hull", "dft", "battery",
          "report")
CODE_STAGES = ("default", "train", "generate", "predict", "relax", "dft", "battery")


class CampaignSpecError(ValueError):
    """An invalid campaign spec: one line naming the dotted path of the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# ------------------------------------------------------------------------------------------------ source
class SourceSpec(_Strict):
    """Where the seed structures (and the default training set) come from."""

    kind: Literal["builtin_hosts", "materials_project", "snapshot", "file"] = "builtin_hosts"
    hosts: list[str] | None = Field(None, description="builtin_hosts: names (default: all built-in hosts)")
    primitive: bool = Field(True, description="builtin_hosts: primitive cells (fewer atoms to relax)")
    criteria: dict[str, Any] | None = Field(
        None, description="materials_project: MPQuery fields (elements, chemsys, energy_above_hull_max_eV ...)")
    api_key_env: str = Field("MP_API_KEY", description="materials_project: environment variable of the key "
                             "(read at query time, never stored)")
    snapshot: str | int | None = Field(
        None, description="snapshot: a battgen.snapshot node (pk, UUID or label); with materials_project, used "
                          "instead of a live query")
    path: str | None = Field(None, description="file: any structure file battgen reads (CIF, POSCAR, CSV ...)")
    max_rows: int | None = Field(None, ge=1, description="keep the first rows only (number of structures)")

    @model_validator(mode="after")
    def _needs(self):
        if self.kind == "file" and not self.path:
            raise ValueError("`source.kind: file` needs `source.path`")
        if self.kind == "snapshot" and self.snapshot is None:
            raise ValueError("`source.kind: snapshot` needs `source.snapshot` (pk, UUID or label)")
        if self.kind == "materials_project" and not self.criteria and self.snapshot is None:
            raise ValueError("`source.kind: materials_project` needs `source.criteria` or `source.snapshot`")
        return self


class SplitSpec(_Strict):
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0

    @field_validator("fractions")
    @classmethod
    def _sum_to_one(cls, value):
        if any(f < 0 for f in value) or abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"train/val/test fractions must be >= 0 and sum to 1, got {list(value)}")
        return value


class DatasetSpec(_Strict):
    """Seed 000 curation (TrainingFilter: preset tmo, max_atoms ...) and split of the training set."""

    filter: dict[str, Any] = Field(default_factory=lambda: {"preset": "none"})
    split: SplitSpec = Field(default_factory=SplitSpec)


# ------------------------------------------------------------------------------------------------ generators
class TrainSpec(_Strict):
    """Train the generator here on the curated set (``battgen train-generator``)."""

    hyperparameters: dict[str, Any] = Field(default_factory=dict,
                                            description="merged over the generator's defaults")
    filter: dict[str, Any] | None = Field(None, description="default: dataset.filter")
    split: SplitSpec | None = Field(None, description="default: dataset.split")
    seed: int = 0
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    finetune_steps: int = Field(20, ge=1, description="loop: optimiser steps added per fine-tuning round")


class GeneratorSpec(_Strict):
    n: int = Field(..., ge=1, description="number of samples (structures)")
    conditions: dict[str, Any] = Field(default_factory=dict)
    train: TrainSpec | None = None
    model: str | int | None = Field(None, description="an existing battgen.model (pk, UUID or label)")
    model_dir: str | None = Field(None, description="a model directory (battgen-model.yaml) to store and use")
    device: str | None = Field(None, description="sampling device (auto | cpu | cuda | cuda:N)")


class ScreeningSpec(_Strict):
    validity: dict[str, Any] = Field(default_factory=dict)
    charge_neutrality: dict[str, Any] = Field(default_factory=dict)
    uniqueness: dict[str, Any] = Field(default_factory=dict)
    novelty: dict[str, Any] = Field(default_factory=dict)


class PredictorRef(_Strict):
    """A property predictor for the ML screen: an existing model (pk/UUID/label) or a model directory."""

    model: str | int | None = None
    model_dir: str | None = None

    @model_validator(mode="after")
    def _one(self):
        if (self.model is None) == (self.model_dir is None):
            raise ValueError("give exactly one of `model` (pk, UUID or label) or `model_dir`")
        return self


class PropertyScreenSpec(_Strict):
    enabled: bool = True
    protocol: str | None = Field(None, description="battgen.property_screen protocol (tmo_seed000, "
                                                   "mg_cathode_seed002)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="deep-merged into the protocol")
    models: dict[str, PredictorRef] = Field(default_factory=dict, description="label used by the protocol -> "
                                                                              "model")


class RelaxSpec(_Strict):
    mlip: str = "chgnet"
    fmax_eV_per_A: float = Field(0.1, gt=0)
    max_steps: int = Field(150, ge=1)
    cell_filter: Literal["frechet", "exp"] | None = "frechet"
    device: str = "cpu"
    preselect_top_k: int = Field(32, ge=1, description="structures relaxed per round (bounds the MLIP step)")
    preselect_sort_by: str | None = Field(None, description="column to rank by before relaxation (default: "
                                                            "substitution_probability with substitution alone)")


class HullSpec(_Strict):
    reference: Literal["known_materials", "mlip", "entries"] = "known_materials"
    entries: str | int | None = Field(None, description="reference: entries: an MP snapshot / entries node")
    materials_project: Literal["auto", "off"] = Field("off", description="auto: fetch MP with a key")
    max_e_above_hull_eV_per_atom: float = 0.1
    rank_hull_incomplete: bool = False
    shortlist_top_k: int = Field(8, ge=1, description="candidates kept per round")

    @model_validator(mode="after")
    def _entries(self):
        if self.reference == "entries" and self.entries is None:
            raise ValueError("`hull.reference: entries` needs `hull.entries` (pk, UUID or label)")
        return self


class DftSpec(_Strict):
    enabled: bool = False
    engine: Literal["quantumespresso", "vasp"] = "quantumespresso"
    code: str | None = Field(None, description="pw.x or VASP code label")
    family: str | None = Field(None, description="aiida-pseudo family (QE) or POTCAR family (VASP) label")
    protocol: str = "fast"
    overrides: dict[str, Any] | None = None
    top_k: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _code_and_family(self):
        if self.enabled and not self.code:
            raise ValueError("`dft.enabled` needs `dft.code` (label of a pw.x or VASP code)")
        if self.enabled and not self.family:
            raise ValueError("`dft.enabled` needs `dft.family` (pseudopotential / POTCAR family label)")
        return self


class BatterySpec(_Strict):
    """Voltage and capacity of the shortlist (pymatgen InsertionElectrode conventions), channel radius,
    MLMD conductivity for the top_k with the cathode-screen protocol."""

    enabled: bool = False
    working_ion: str = "Li"
    voltage_from: list[Literal["mlip", "dft"]] = Field(default_factory=lambda: ["mlip"])
    insertion_top_k: int = Field(3, ge=1, description="candidates whose insertion voltage is computed")
    insertion_protocol: str = "fast"
    insertion_ions: list[str] | None = Field(None, description="ions inserted (default: [working_ion]); seed 001 "
                                                               "inserts Li, Ca and Al")
    channel_radius: bool = False
    md_top_k: int = Field(0, ge=0, description="MLMD conductivity (cathode-screen protocol) for the best k")

    @model_validator(mode="after")
    def _not_yet(self):
        # Refused rather than ignored: these run on the shortlist group with their own work chains today.
        if self.channel_radius:
            raise ValueError("`battery.channel_radius` is not run by the campaign yet: run battgen.si_anode / "
                             "`battgen channels` on the shortlist group")
        if self.md_top_k:
            raise ValueError("`battery.md_top_k` is not run by the campaign yet: run battgen.mg_cathode_screen "
                             "(cathode_screen.yaml) on the shortlist group")
        return self


class ReportSpec(_Strict):
    enabled: bool = True
    formats: list[Literal["csv", "png", "svg", "html"]] = Field(default_factory=lambda: ["csv", "png", "html"])


class LoopSpec(_Strict):
    iterations: int = Field(1, ge=1, description="rounds of sample -> screen -> fine-tune on the survivors")
    stop_when_no_new_survivor: bool = True


class CodesSpec(_Strict):
    """AiiDA code labels per stage (``label@computer``); unset stages use ``default``."""

    default: str = "battgen@localhost"
    train: str | None = None
    generate: str | None = None
    predict: str | None = None
    relax: str | None = None
    battery: str | None = None

    def for_stage(self, stage: str) -> str:
        return getattr(self, stage, None) or self.default


class CampaignSpec(_Strict):
    name: str = Field(..., min_length=1)
    description: str = ""
    seed: int = 2024
    codes: CodesSpec = Field(default_factory=CodesSpec)
    source: SourceSpec = Field(default_factory=SourceSpec)
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    generators: dict[str, GeneratorSpec]
    screening: ScreeningSpec = Field(default_factory=ScreeningSpec)
    property_screen: PropertyScreenSpec | None = None
    relax: RelaxSpec = Field(default_factory=RelaxSpec)
    hull: HullSpec = Field(default_factory=HullSpec)
    dft: DftSpec = Field(default_factory=DftSpec)
    battery: BatterySpec = Field(default_factory=BatterySpec)
    report: ReportSpec = Field(default_factory=ReportSpec)
    loop: LoopSpec = Field(default_factory=LoopSpec)

    @field_validator("generators")
    @classmethod
    def _generators(cls, value: dict[str, GeneratorSpec]):
        if not value:
            raise ValueError("give at least one generator")
        registered = registered_generator_names()
        supported = (*UNTRAINED_GENERATORS, *TRAINABLE_GENERATORS)
        for name, generator in value.items():
            if name not in registered:
                raise ValueError(f"generator {name!r} is not registered (battgen.generators entry points: "
                                 f"{', '.join(sorted(registered))})")
            if name not in supported:
                raise ValueError(f"generator {name!r} is registered but the campaign runs only {list(supported)}")
            sources = [key for key in ("train", "model", "model_dir") if getattr(generator, key) is not None]
            if name in UNTRAINED_GENERATORS and sources:
                raise ValueError(f"generator {name!r} has no weights: drop {sources}")
            if name in TRAINABLE_GENERATORS and len(sources) != 1:
                raise ValueError(f"generator {name!r}: give exactly one of `train` (trained here), `model` (pk, "
                                 f"UUID or label) or `model_dir`, got {sources or 'none'}")
        return value

    # -------------------------------------------------------------------------------------------- helpers
    def trained_here(self) -> list[str]:
        return [name for name, g in self.generators.items() if g.train is not None]

    def training_parameters(self, name: str) -> dict[str, Any]:
        """The ``battgen train-generator`` parameters of a generator trained here (units as the CLI's)."""
        generator = self.generators[name]
        assert generator.train is not None
        split = generator.train.split or self.dataset.split
        return {
            "generator": name,
            "filter": generator.train.filter if generator.train.filter is not None else self.dataset.filter,
            "split": {"fractions": list(split.fractions), "seed": split.seed},
            "seed": generator.train.seed,
            "hyperparameters": generator.train.hyperparameters,
            "device": generator.train.device,
        }

    def discovery_overrides(self, names: list[str] | None = None) -> dict[str, Any]:
        """Overrides of the ``battgen.discovery`` protocol (``fast``) for one round running ``names``
        (default: every generator). The relaxation ``device`` is not a protocol key: the work chain sets it."""
        names = list(names or self.generators)
        runs = []
        for name in names:
            generator = self.generators[name]
            conditions = dict(generator.conditions)
            if generator.device and name in TRAINABLE_GENERATORS:
                conditions.setdefault("device", generator.device)
            runs.append({"generator": name, "n": generator.n, "conditions": conditions})
        only_substitution = names == ["substitution"]
        sort_by = self.relax.preselect_sort_by or ("substitution_probability" if only_substitution else None)
        overrides: dict[str, Any] = {
            "seed": self.seed,
            "known_materials": "embedded" if self.hull.reference == "known_materials" else None,
            "materials_project": self.hull.materials_project,
            "generation": {**runs[0], "additional_generators": runs[1:]},
            "screening": self.screening.model_dump(),
            "preselection": {"sort_by": sort_by, "top_k": self.relax.preselect_top_k},
            "relax": {"relax": {"parameters": {"mlip": self.relax.mlip, "fmax": self.relax.fmax_eV_per_A,
                                               "max_steps": self.relax.max_steps,
                                               "cell_filter": self.relax.cell_filter}}},
            "hull": {"rank_hull_incomplete": self.hull.rank_hull_incomplete},
            "shortlist": {"top_k": self.hull.shortlist_top_k,
                          "max_values": {"e_above_hull_eV_per_atom": self.hull.max_e_above_hull_eV_per_atom}},
        }
        if self.dft.enabled:  # the DFT stage runs because the work chain passes its dft code
            overrides["dft"] = {"engine": self.dft.engine, "protocol": self.dft.protocol,
                                "overrides": self.dft.overrides, "family": self.dft.family}
            overrides["dft_top_k"] = self.dft.top_k
        return overrides

    def stages(self) -> list[str]:
        """The stages this campaign runs, in order."""
        on = {"source": True, "train": bool(self.trained_here()), "generate": True, "screening": True,
              "property_screen": self.property_screen is not None and self.property_screen.enabled,
              "relax": True, "hull": True, "dft": self.dft.enabled, "battery": self.battery.enabled,
              "report": self.report.enabled}
        return [stage for stage in STAGES if on[stage]]

    def expected_counts(self) -> dict[str, int]:
        """Upper bounds per round (structures): samples, relaxed, shortlisted, DFT."""
        return {"samples_per_round": sum(g.n for g in self.generators.values()),
                "relaxed_per_round_max": self.relax.preselect_top_k,
                "shortlisted_per_round_max": self.hull.shortlist_top_k,
                "dft_max": self.dft.top_k if self.dft.enabled else 0,
                "rounds_max": self.loop.iterations}


def registered_generator_names() -> list[str]:
    """Names of the ``battgen.generators`` entry points without the ``battgen.`` prefix."""
    from battgen.generate.base import ENTRY_POINT_PREFIX, registered_generators

    return sorted(name.removeprefix(ENTRY_POINT_PREFIX) for name in registered_generators())


def _dotted(location: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in location) or "(top level)"


def format_validation_error(error: ValidationError) -> str:
    """The first problem as one line: ``spec: `generators.cdvae.trian`: unknown key``."""
    problems = []
    for item in error.errors():
        where = _dotted(item["loc"])
        if item["type"] == "extra_forbidden":
            problems.append(f"`{where}`: unknown key")
        elif item["type"] == "missing":
            problems.append(f"`{where}`: required key missing")
        else:
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"`{where}`: {message}" if item["loc"] else message)
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"invalid campaign spec: {problems[0]}{more}"


def parse_spec(data: Any) -> CampaignSpec:
    """A validated spec from a mapping; :class:`CampaignSpecError` (one line) otherwise."""
    if not isinstance(data, dict):
        raise CampaignSpecError(f"invalid campaign spec: expected a mapping at the top level, got "
                                f"{type(data).__name__}")
    try:
        return CampaignSpec.model_validate(data)
    except ValidationError as exc:
        raise CampaignSpecError(format_validation_error(exc)) from None


def load_spec(path: str | Path) -> CampaignSpec:
    """Read and validate a campaign YAML file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CampaignSpecError(f"cannot read campaign spec {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise CampaignSpecError(f"campaign spec {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_spec(data)
