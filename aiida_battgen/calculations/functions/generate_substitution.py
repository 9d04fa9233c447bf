"""``battgen.generate_substitution``: probability-guided ion substitution on seed structures."""

from __future__ import annotations

from aiida import orm
from aiida.engine import calcfunction

from aiida_battgen.calculations.functions._screening import empty_batch, invalid_parameters
from aiida_battgen.data.batch import StructureBatchData
from battgen.generate.substitution import SubstitutionGenerator

# ``generator`` is allowed so a work chain can pass its whole generation settings unchanged.
_PARAMETER_KEYS = {"generator", "n", "conditions"}


@calcfunction
def generate_substitution(seeds: StructureBatchData, parameters: orm.Dict, seed: orm.Int):
    """Generate up to ``n`` substituted candidates (output ``structures``; rows carry ``substitution``,
    ``substitution_probability``, ``parent_row_id``).

    :param seeds: host structures to substitute (StructureBatchData).
    :param parameters: Dict with ``n`` (number of candidates, integer) and ``conditions``: see
        ``battgen.generate.substitution.DEFAULT_CONDITIONS`` (``threshold`` is a dimensionless
        probability; element lists are symbols).
    :param seed: random seed (Int) for the probability-weighted draw when more than ``n`` qualify.
    """
    values = parameters.get_dict()
    unknown = sorted(set(values) - _PARAMETER_KEYS)
    if unknown:
        return invalid_parameters(f"unknown key(s) {unknown}; allowed: {sorted(_PARAMETER_KEYS)}")
    if values.get("generator", "substitution") not in ("substitution", "battgen.substitution"):
        return invalid_parameters(f"generator {values['generator']!r} is not the substitution generator")
    n = values.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        return invalid_parameters(f"'n' must be a positive integer, got {n!r}")
    if seeds.n_rows == 0:
        return empty_batch("seeds")
    try:
        generated = SubstitutionGenerator().generate(seeds.get_batch(), n, values.get("conditions"), seed.value)
    except ValueError as exc:
        return invalid_parameters(str(exc))
    return {"structures": StructureBatchData(batch=generated)}
