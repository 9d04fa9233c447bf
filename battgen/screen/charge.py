"""Charge neutrality + electronegativity (SMACT), with CDVAE's settings so the numbers are comparable.

CDVAE's ``smact_validity(comp, count, use_pauling_test=True, include_alloys=True)`` (smact 2.x) is
reproduced by :func:`smact.screening.smact_validity` of smact 4 with ``oxidation_states_set="smact14"``:
CDVAE read ``Element.oxidation_states``, which in smact 2.x was the original SMACT (2014) oxidation-state
list. smact 4's own default (an ICSD-24 filtered list) is stricter; pass ``oxidation_states_set=None``
to use it. One-element compositions and all-metal alloys pass, as in CDVAE.
"""

from __future__ import annotations

from functools import lru_cache

from pymatgen.core import Composition
from smact.screening import smact_validity

CDVAE_OXIDATION_STATES_SET = "smact14"
NO_NEUTRAL_COMBINATION = "SMACT: no charge-neutral oxidation-state combination"
FAILS_PAULING = "SMACT: charge-neutral combinations all fail the Pauling electronegativity test"
# SMACT enumerates every product of oxidation states: beyond ~8 elements that takes hours (seen with
# language-model output of 14 elements). No MP-20 / TMO training structure has more than 7 elements.
MAX_SMACT_ELEMENTS = 8
TOO_MANY_ELEMENTS = f"SMACT: more than {MAX_SMACT_ELEMENTS} elements (not enumerated)"


@lru_cache(maxsize=65536)
def _cached_reason(
    reduced_counts: tuple[tuple[str, float], ...],
    use_pauling_test: bool,
    include_alloys: bool,
    oxidation_states_set: str | None,
) -> str | None:
    if len(reduced_counts) > MAX_SMACT_ELEMENTS:
        return TOO_MANY_ELEMENTS
    composition = Composition(dict(reduced_counts))
    kwargs = {"include_alloys": include_alloys, "oxidation_states_set": oxidation_states_set}
    if smact_validity(composition, use_pauling_test=use_pauling_test, **kwargs):
        return None
    # Second call only for rejected rows: says which of the two SMACT rules failed.
    if use_pauling_test and smact_validity(composition, use_pauling_test=False, **kwargs):
        return FAILS_PAULING
    return NO_NEUTRAL_COMBINATION


def charge_neutrality_reason(
    composition: Composition | str,
    use_pauling_test: bool = True,
    include_alloys: bool = True,
    oxidation_states_set: str | None = CDVAE_OXIDATION_STATES_SET,
) -> str | None:
    """``None`` when SMACT finds a charge-neutral, electronegativity-ordered assignment, else the reason.

    Cached by reduced formula: generated batches repeat a few hundred compositions thousands of times.
    """
    composition = Composition(composition).element_composition
    # smact divides the counts by their gcd anyway, so the reduced counts are an exact cache key (not the
    # reduced formula string: pymatgen rewrites a few, e.g. peroxides).
    reduced = composition.get_reduced_composition_and_factor()[0]
    key = tuple(sorted((element.symbol, amount) for element, amount in reduced.items()))
    return _cached_reason(key, use_pauling_test, include_alloys, oxidation_states_set)


def is_charge_neutral(composition: Composition | str, **settings) -> bool:
    return charge_neutrality_reason(composition, **settings) is None
