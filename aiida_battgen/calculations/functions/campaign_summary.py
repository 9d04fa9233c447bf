"""``battgen.campaign_summary``: the campaign's funnel, loop rounds and per-candidate results, computed from
the batches and Dicts the stages returned (so the summary's graph leads to every number in it).

Inputs (dynamic namespace, link labels say what each node is):

* ``r<NN>_generated`` / ``r<NN>_shortlist`` / ``r<NN>_new``: round NN's generated batch, its shortlist and
  the shortlisted rows that match no survivor of an earlier round (structures);
* ``r<NN>_funnel``: round NN's discovery funnel (Dict);
* ``capacity_r<NN>``: round NN's shortlist with capacity columns (battery stage);
* ``voltage_<label>`` / ``dft_ef_<label>``: insertion voltage summary (Dict) / DFT formation energy (Float,
  eV/atom) of the candidate with output label ``<label>``;
* ``parameters``: {name, shortlist_group, stages, models}.
"""

from __future__ import annotations

import re

from aiida import orm
from aiida.engine import ExitCode, calcfunction

from battgen.campaign.summary import build_summary

_ROUND = re.compile(r"^r(\d+)_(generated|shortlist|new|funnel)$")
_OTHER = re.compile(r"^(capacity_r\d+|voltage_\w+|dft_ef_\w+)$")
PARAMETER_KEYS = {"name", "shortlist_group", "stages", "models"}


@calcfunction
def campaign_summary(parameters: orm.Dict, **nodes):
    """{funnel, rounds, candidates, ...} of a campaign (units in the key names)."""
    unknown = sorted(set(parameters.get_dict()) - PARAMETER_KEYS)
    if unknown:
        return ExitCode(321, f"unknown summary parameter(s) {unknown}; allowed: {sorted(PARAMETER_KEYS)}")
    labels = sorted(label for label in nodes if not (_ROUND.match(label) or _OTHER.match(label)))
    if labels:
        return ExitCode(322, f"input label(s) {labels} name no round batch, funnel, capacity, voltage or DFT energy")
    rounds: dict[int, dict] = {}
    capacities, voltages, dft = {}, {}, {}
    for label, node in nodes.items():
        match = _ROUND.match(label)
        if match:
            entry = rounds.setdefault(int(match.group(1)), {})
            kind = match.group(2)
            entry[kind] = node.get_dict() if kind == "funnel" else node.get_batch()
        elif label.startswith("capacity_r"):
            capacities[int(label.removeprefix("capacity_r"))] = node.get_batch()
        elif label.startswith("voltage_"):
            voltages[label.removeprefix("voltage_")] = node.get_dict()
        elif label.startswith("dft_ef_"):
            dft[label.removeprefix("dft_ef_")] = node.value
    return orm.Dict(build_summary(parameters.get_dict(), rounds, capacities, voltages, dft))
