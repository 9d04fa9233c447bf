"""Ion substitution guided by the data-mined substitution probabilities of Hautier et al.
(*Inorg. Chem.* 50, 656 (2011)), as implemented in pymatgen's ``SubstitutionProbability`` lambda table.

For every seed structure:

1. Oxidation states: bond valence (``BVAnalyzer``); else pymatgen's charge-balanced guess; else, for
   metallic hosts (Si, Li15Si4 ...), each element's first common oxidation state known to the table
   (a label for "chemically similar element" only; such hosts are not charge-balanced).
2. Candidates: replace one host species X (or ``max_substituted_species`` = 2 of them) by a species Y of
   another element; probability = ``cond_prob_list(new species, host species)``, the table's probability
   of the new species set given the host's (unchanged species contribute their self-substitution
   factor, so numbers compare across hosts like ``SubstitutionPredictor.list_prediction``). Keep those
   with probability >= ``threshold`` that satisfy ``required_elements`` / ``forbidden_elements`` /
   ``allowed_elements``; Y's element must not already be in the host (that would merge sublattices).
3. Charge (``require_charge_neutral``, on by default): for ionic hosts the new species must keep the
   assigned charges summing to zero (so one-species substitutions are isovalent, two-species ones may be
   coupled, e.g. Li+ + Co3+ -> Mg2+ + Co2+... whatever the table proposes), and the new composition must
   pass SMACT charge neutrality (CDVAE settings, see :mod:`battgen.screen.charge`). Hosts that fail SMACT
   themselves (intermetallics such as Li15Si4) are exempt: the test says nothing about their analogues.
4. Deduplicate per parent at element level (Co3+->Fe3+ and Co3+->Fe2+ give the same structure; the more
   probable is kept), keep the ``max_per_seed`` most probable per seed.
5. Volume: rescaled with pymatgen's ``RLSVolumePredictor`` (the host volume scaled by the ratio of ionic
   radii, atomic radii for metallic hosts; Hautier's "reference-structure" rule); if it cannot be
   applied, the host volume is kept and ``volume_rule`` says so.

If more than ``n`` candidates remain, ``n`` are drawn without replacement with weights proportional to
their probability, using ``numpy.random.default_rng(seed)``: the output is deterministic for a seed.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from functools import cached_property
from typing import Any

import numpy as np
from pymatgen.analysis.bond_valence import BVAnalyzer
from pymatgen.analysis.structure_prediction.substitution_probability import SubstitutionProbability
from pymatgen.analysis.structure_prediction.volume_predictor import RLSVolumePredictor
from pymatgen.core import Composition, Element, Species, Structure
from tqdm.auto import tqdm

from battgen.batch import StructureBatch
from battgen.generate.base import Generator
from battgen.screen.charge import is_charge_neutral

logger = logging.getLogger(__name__)

DEFAULT_CONDITIONS: dict[str, Any] = {
    "required_elements": [],
    "forbidden_elements": [],
    "allowed_elements": None,  # None: any element of the table
    "threshold": 1e-4,  # minimum substitution probability (dimensionless)
    "max_per_seed": 50,
    "max_substituted_species": 1,
    "rescale_volume": True,
    "require_charge_neutral": True,
}


def validate_conditions(conditions: dict[str, Any] | None) -> dict[str, Any]:
    """Conditions merged with the defaults; unknown keys or bad values raise ValueError."""
    conditions = dict(conditions or {})
    unknown = sorted(set(conditions) - set(DEFAULT_CONDITIONS))
    if unknown:
        raise ValueError(f"unknown substitution condition(s) {unknown}; allowed: {sorted(DEFAULT_CONDITIONS)}")
    merged = {**DEFAULT_CONDITIONS, **conditions}
    for key in ("required_elements", "forbidden_elements", "allowed_elements"):
        if merged[key] is None:
            continue
        if isinstance(merged[key], str):
            raise ValueError(f"{key} must be a list of element symbols, got the string {merged[key]!r}")
        for symbol in merged[key]:
            if not Element.is_valid_symbol(str(symbol)):
                raise ValueError(f"{key}: {symbol!r} is not an element symbol")
        merged[key] = sorted({str(s) for s in merged[key]})
    if not 0 <= float(merged["threshold"]) <= 1:
        raise ValueError(f"threshold is a probability in [0, 1], got {merged['threshold']!r}")
    if int(merged["max_per_seed"]) < 1:
        raise ValueError(f"max_per_seed must be >= 1, got {merged['max_per_seed']!r}")
    if int(merged["max_substituted_species"]) not in (1, 2):
        raise ValueError("max_substituted_species must be 1 or 2")
    return merged


def assign_oxidation_states(structure: Structure, known_species: set) -> tuple[Structure, str]:
    """(oxidation-state-decorated copy, how the states were obtained)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            decorated = BVAnalyzer().get_oxi_state_decorated_structure(structure)
            if all(sp in known_species for sp in decorated.composition):
                return decorated, "bond_valence"
        except ValueError:
            pass
        guesses = structure.composition.oxi_state_guesses(max_sites=-50)
        for guess in guesses:
            if all(Species(el, round(ox)) in known_species and ox == round(ox) for el, ox in guess.items()):
                decorated = structure.copy()
                decorated.add_oxidation_state_by_element({el: round(ox) for el, ox in guess.items()})
                return decorated, "charge_balanced_guess"
    # Metallic / intermetallic host: a species label per element so the table can suggest analogues.
    states = {}
    for element in structure.composition.elements:
        options = [ox for ox in sorted(element.common_oxidation_states, key=lambda o: (o < 0, abs(o)))
                   if Species(element.symbol, ox) in known_species]
        options += [sp.oxi_state for sp in known_species if sp.symbol == element.symbol]
        if not options:
            raise ValueError(f"no oxidation state of {element} is in the substitution table")
        states[element.symbol] = options[0]
    decorated = structure.copy()
    decorated.add_oxidation_state_by_element(states)
    return decorated, "common_states_metallic_host"


class SubstitutionGenerator(Generator):
    """Substitution of ions in seed structures, ranked by data-mined substitution probabilities."""

    name = "substitution"

    def __init__(self, progress: bool = False) -> None:
        self.progress = progress

    @cached_property
    def table(self) -> SubstitutionProbability:
        # alpha (the table's smoothing) stays at pymatgen's default; the threshold is applied by us.
        return SubstitutionProbability()

    @cached_property
    def known_species(self) -> set:
        return set(self.table.species)

    def candidates_for_seed(self, structure: Structure, conditions: dict[str, Any]) -> tuple[list[dict], dict]:
        """Ranked substitutions of one seed: dicts with ``species_map`` (Species -> Species) and
        ``probability``; plus info about the host (oxidation-state source, SMACT result)."""
        decorated, ox_source = assign_oxidation_states(structure, self.known_species)
        host_species = sorted(set(decorated.species), key=str)
        host_elements = {sp.symbol for sp in host_species}
        host_neutral = is_charge_neutral(structure.composition)
        ionic_host = ox_source != "common_states_metallic_host"
        required, forbidden = set(conditions["required_elements"]), set(conditions["forbidden_elements"])
        allowed = None if conditions["allowed_elements"] is None else set(conditions["allowed_elements"])

        def replacement_ok(new: Species) -> bool:
            return new.symbol not in host_elements and new.symbol not in forbidden and (
                allowed is None or new.symbol in allowed
            )

        best: dict[tuple, dict] = {}
        n_species = min(int(conditions["max_substituted_species"]), len(host_species))
        for replaced in itertools.chain.from_iterable(
            itertools.combinations(host_species, k) for k in range(1, n_species + 1)
        ):
            options = [[y for y in self.table.species if replacement_ok(y)] for _ in replaced]
            for new_species in itertools.product(*options):
                if len({y.symbol for y in new_species}) < len(new_species):
                    continue
                species_map = dict(zip(replaced, new_species))
                new_list = [species_map.get(sp, sp) for sp in host_species]
                probability = self.table.cond_prob_list(new_list, host_species)
                if probability < conditions["threshold"]:
                    continue
                elements = {sp.symbol for sp in new_list}
                if not required <= elements or elements & forbidden or (allowed is not None and not elements <= allowed):
                    continue
                element_key = tuple(sorted((x.symbol, y.symbol) for x, y in species_map.items()))
                if element_key not in best or probability > best[element_key]["probability"]:
                    best[element_key] = {"species_map": species_map, "probability": float(probability)}
        ranked = sorted(best.values(), key=lambda c: (-c["probability"], str(c["species_map"])))
        kept = []
        for candidate in ranked:
            element_map = {x.symbol: y.symbol for x, y in candidate["species_map"].items()}
            composition = Composition(structure.composition).replace(element_map)
            if conditions["require_charge_neutral"] and host_neutral:
                if ionic_host and abs(self._charge(decorated, candidate["species_map"])) > 1e-6:
                    continue
                if not is_charge_neutral(composition):
                    continue
            kept.append(candidate)
            if len(kept) >= int(conditions["max_per_seed"]):
                break
        host = {"decorated": decorated, "oxidation_state_source": ox_source, "host_charge_neutral": host_neutral}
        return kept, host

    @staticmethod
    def _charge(decorated: Structure, species_map: dict) -> float:
        """Total charge (e per cell) of the host with ``species_map`` applied to its assigned species."""
        return sum(species_map.get(sp, sp).oxi_state * amount for sp, amount in decorated.composition.items())

    def build_structure(self, structure: Structure, host: dict, species_map: dict, rescale: bool) -> tuple:
        """The substituted structure (no oxidation states) and the volume rule applied."""
        new_decorated = host["decorated"].copy()
        new_decorated.replace_species(species_map)
        new = structure.copy()
        new.replace_species({x.symbol: y.symbol for x, y in species_map.items()})
        if not rescale:
            return new, "kept host volume"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if host["oxidation_state_source"] == "common_states_metallic_host":
                    # the species labels of metallic hosts are not ions: use atomic radii
                    volume = RLSVolumePredictor().predict(new, structure)
                else:
                    volume = RLSVolumePredictor().predict(new_decorated, host["decorated"])
            new.scale_lattice(volume)
            return new, "RLSVolumePredictor (ionic-atomic radius ratio)"
        except (ValueError, KeyError, TypeError) as exc:
            logger.debug("volume kept for %s: %s", new.composition.reduced_formula, exc)
            return new, "kept host volume (no radii)"

    def generate(
        self, seed_structures: StructureBatch, n: int, conditions: dict[str, Any] | None = None, seed: int = 0
    ) -> StructureBatch:
        conditions = validate_conditions(conditions)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n and not len(seed_structures):
            raise ValueError("substitution needs seed structures to substitute, but the seed batch has no rows")
        pool: list[tuple[int, int, dict, dict]] = []  # (seed index, rank, candidate, host)
        for seed_index, (meta, structure) in enumerate(
            tqdm(seed_structures, desc="substitution", disable=not self.progress)
        ):
            try:
                candidates, host = self.candidates_for_seed(structure, conditions)
            except ValueError as exc:
                logger.warning("seed %s skipped: %s", meta["row_id"], exc)
                continue
            pool.extend((seed_index, rank, candidate, host) for rank, candidate in enumerate(candidates))

        if len(pool) > n:
            weights = np.array([item[2]["probability"] for item in pool])
            chosen = np.random.default_rng(seed).choice(len(pool), size=n, replace=False, p=weights / weights.sum())
            pool = [pool[i] for i in sorted(chosen)]

        structures, rows = [], []
        for index, (seed_index, rank, candidate, host) in enumerate(pool):
            parent_meta, parent = seed_structures.meta[seed_index], seed_structures.structures[seed_index]
            new, volume_rule = self.build_structure(
                parent, host, candidate["species_map"], bool(conditions["rescale_volume"])
            )
            structures.append(new)
            rows.append({
                "row_id": self.row_id(index),
                "generator": self.name,
                "parent_row_id": parent_meta["row_id"],
                "parent_formula": parent.composition.reduced_formula,
                "substitution": {x.symbol: y.symbol for x, y in candidate["species_map"].items()},
                "substitution_species": {str(x): str(y) for x, y in candidate["species_map"].items()},
                "substitution_probability": candidate["probability"],
                "substitution_rank_in_parent": rank,
                "oxidation_state_source": host["oxidation_state_source"],
                "formula": new.composition.reduced_formula,
                "volume_rule": volume_rule,
                "volume_ratio_to_parent": new.volume / parent.volume,
            })
        return StructureBatch(structures, rows)
