"""Bad MD / relax / Si-anode settings are refused at submit, by each command's own settings model
(battgen.contracts), before any CalcJob node exists: nothing waits in a queue to fail as exit 303."""

from __future__ import annotations

import re

import pytest
from aiida import orm
from aiida.engine import run_get_node
from pymatgen.core import Lattice, Structure

from aiida_battgen.calculations import md as md_calc
from aiida_battgen.calculations.md import MdCalculation
from aiida_battgen.calculations.relax import MlipRelaxCalculation
from aiida_battgen.calculations.si_anode import SiAnodeCalculation
from aiida_battgen.data.batch import StructureBatchData

pytestmark = pytest.mark.usefixtures("aiida_profile_clean")


def _calcjobs() -> int:
    return orm.QueryBuilder().append(orm.CalcJobNode).count()


def _structure() -> orm.StructureData:
    return orm.StructureData(pymatgen=Structure(Lattice.cubic(4.0), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]))


SUBMISSIONS = {
    "md-negative-temperature": (MdCalculation, "structure", {"temperature_K": -300.0}, "temperature_K"),
    "md-chunk-not-multiple": (MdCalculation, "structure", {"sample_every": 7, "chunk_steps": 100}, "multiple"),
    "md-unknown-thermostat": (MdCalculation, "structure", {"nvt_thermostat": "nose"}, "nvt_thermostat"),
    "md-vacancies-without-ion": (MdCalculation, "structure", {"vacancy_fraction": 0.2}, "need working_ion"),
    "md-string-number": (MdCalculation, "structure", {"taup_fs": "1000"}, "taup_fs must be a number"),
    "relax-negative-fmax": (MlipRelaxCalculation, "structures", {"fmax": -0.05}, "fmax must be a positive number"),
    "relax-zero-steps": (MlipRelaxCalculation, "structures", {"max_steps": 0}, "max_steps must be a positive integer"),
    "relax-unknown-engine": (MlipRelaxCalculation, "structures", {"engine": "gpu"}, "engine must be one of"),
    "si-anode-fraction-above-one": (SiAnodeCalculation, "structures", {"max_removed_fraction": 1.5},
                                    r"max_removed_fraction must be in \(0, 1\]"),
    "si-anode-bad-element": (SiAnodeCalculation, "structures", {"host_element": "Xx"}, "element symbol"),
    "si-anode-zero-configurations": (SiAnodeCalculation, "structures", {"n_configurations": 0},
                                     "n_configurations must be a positive integer"),
}


@pytest.mark.parametrize("case", sorted(SUBMISSIONS))
def test_bad_settings_are_refused_before_a_calcjob_exists(case, battgen_code, small_batch):
    process, structure_port, parameters, message = SUBMISSIONS[case]
    inputs = {"code": battgen_code, "parameters": orm.Dict(parameters)}
    inputs[structure_port] = _structure() if structure_port == "structure" else StructureBatchData(small_batch)
    before = _calcjobs()
    with pytest.raises(ValueError, match=message):
        run_get_node(process, **inputs)
    assert _calcjobs() == before, "a CalcJob node was created for refused settings"


@pytest.mark.parametrize(("parameters", "message"), [
    ({"temperature_K": -300}, r"parameters.temperature_K must be a positive number \(K\), got -300"),
    ({"temperature_K": 1e7}, r"parameters.temperature_K: 1e\+07 K is above 10000 K"),
    ({"timestep_fs": 0}, r"parameters.timestep_fs must be a positive number \(fs\)"),
    ({"npt_time_ps": 0, "nvt_time_ps": 0}, r"npt_time_ps \+ nvt_time_ps must be positive"),
    ({"taut_fs": "100"}, r"parameters.taut_fs must be a number \(fs\), got '100'"),
    ({"sample_every": 7, "chunk_steps": 100}, r"chunk_steps \(100\) must be a multiple of sample_every \(7\)"),
    ({"nvt_thermostat": "berendsen"}, r"parameters.nvt_thermostat must be one of 'nose_hoover_chain', 'bussi' or"),
    ({"vacancy_fraction": 1.0, "working_ion": "Li"}, r"parameters.vacancy_fraction must be in \[0, 1\), got 1.0"),
    ({"vacancy_count": 2}, r"vacancy_fraction / vacancy_count need working_ion"),
    ({"seed": -1}, r"parameters.seed must be a non-negative integer"),
    ({"mlip": "mace"}, r"unknown MLIP 'mace'"),
    ({"restart": False}, r"parameters.restart: set by the job"),
    ({"temperature": 300}, r"unknown parameter\(s\) \['temperature'\] in `parameters`"),
])
def test_bad_md_settings_are_refused_by_the_port(parameters, message):
    """All of the md settings are checked at submit by the command's own model (not after the queue as 303)."""
    error = md_calc.validate_md_parameters(orm.Dict(parameters))
    assert error is not None and re.search(message, error), error


def test_bad_analysis_settings_are_refused_by_the_port():
    assert md_calc.validate_analysis_parameters(orm.Dict({"uncertainty": "block", "n_blocks": 2})) is None
    assert "analysis.uncertainty must be one of" in md_calc.validate_analysis_parameters(orm.Dict({"uncertainty": "x"}))
    assert "analysis.working_ion: set by the job" in md_calc.validate_analysis_parameters(
        orm.Dict({"working_ion": "Li"}))




def test_good_settings_pass_the_same_validators():
    from aiida_battgen.calculations.relax import validate_relax_parameters
    from aiida_battgen.calculations.si_anode import validate_si_anode_parameters

    md = {"mlip": "chgnet", "npt_time_ps": 0.0, "nvt_time_ps": 0.24, "timestep_fs": 2.0, "sample_every": 5,
          "chunk_steps": 60, "supercell_min_atoms": 16, "working_ion": "Li", "vacancy_count": 1,
          "downsampled_max_frames": 20, "max_wall_time_s": 0.001}
    assert md_calc.validate_md_parameters(orm.Dict(md)) is None
    assert validate_relax_parameters(orm.Dict({"fmax": 0.1, "cell_filter": None, "mlip": "battgen.chgnet"})) is None
    assert validate_si_anode_parameters(orm.Dict({"n_configurations": 3, "max_wall_time_s": 0, "fmax": 1})) is None
