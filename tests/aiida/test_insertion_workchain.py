"""Insertion potentials in AiiDA: the insertion_voltage calcfunction (hand numbers, bad input), the
InsertionCalculation inputs, protocols, and InsertionPotentialWorkChain end to end through the real
``battgen insertion`` CLI on localhost (CHGNet, rutile), including its not-converged handler."""

from __future__ import annotations

import pytest
import yaml
from aiida import orm
from aiida.common.folders import SandboxFolder
from aiida.engine import run_get_node
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager
from aiida.plugins import CalculationFactory, ParserFactory, WorkflowFactory

from aiida_battgen.calculations import insertion as calc
from aiida_battgen.calculations.functions.insertion_voltage import ION_CHARGES, insertion_voltage
from aiida_battgen.calculations.insertion import InsertionCalculation
from aiida_battgen.workchains.insertion import InsertionPotentialWorkChain
from aiida_battgen.workchains.protocols.utils import UnknownProtocolKeyError
from battgen.channels.reference_structures import rutile_tio2

pytestmark = pytest.mark.usefixtures("aiida_profile_clean")


def test_entry_points_and_one_contract_for_both_layers():
    from battgen.insertion import potential

    assert CalculationFactory("battgen.insertion") is InsertionCalculation
    assert CalculationFactory("battgen.insertion_voltage") is insertion_voltage
    assert ParserFactory("battgen.insertion").__name__ == "InsertionParser"
    assert WorkflowFactory("battgen.insertion") is InsertionPotentialWorkChain
    assert InsertionCalculation.OUTPUT_FILES == (
        potential.OUTPUT_BATCH, potential.OUTPUT_TABLE_CSV, potential.OUTPUT_TABLE_JSON, potential.OUTPUT_FIGURE)
    # pymatgen's formal charges, one source for the calcfunction and the science command
    assert ION_CHARGES == potential.ION_CHARGES == {"Li": 1, "Na": 1, "K": 1, "Mg": 2, "Ca": 2, "Zn": 2, "Al": 3}
    assert calc.validate_insertion_parameters(orm.Dict({"ions": ["Mg"], "n_ions": [1, 2], "fmax": 0.1})) is None
    # the cache contract of its exit codes: tests/aiida/calculations/test_autoinvalidate_cache.py (every CalcJob)


def test_insertion_voltage_calcfunction_by_hand():
    """Ca, n = 2: E_host = −100, E(host+2Ca) = −110, E_ref = −1.980 (seed 001's Ca energy) → ΔE = −6.04 eV →
    V = 6.04 / (2·2) = 1.51 V; ΔE/n = −3.02 eV/ion."""
    outputs, node = insertion_voltage.run_get_node(
        energy_host_eV=orm.Float(-100.0), energy_inserted_eV=orm.Float(-110.0), n_ions=orm.Int(2),
        reference_energy_eV_per_atom=orm.Float(-1.98), ion=orm.Str("Ca"), reference=orm.Str("seed 001 DFT Ca"))
    assert node.is_finished_ok
    assert outputs["voltage"].value == pytest.approx(1.51, abs=1e-12)
    assert outputs["parameters"]["insertion_energy_per_ion_eV"] == pytest.approx(-3.02, abs=1e-12)
    assert outputs["parameters"]["ion_charge"] == 2 and outputs["parameters"]["reference"] == "seed 001 DFT Ca"
    # explicit charge for an ion outside the table; unknown ion without it; n = 0
    outputs, node = insertion_voltage.run_get_node(
        energy_host_eV=orm.Float(-100.0), energy_inserted_eV=orm.Float(-103.0), n_ions=orm.Int(1),
        reference_energy_eV_per_atom=orm.Float(-1.0), ion=orm.Str("Y"), ion_charge=orm.Int(3))
    assert outputs["voltage"].value == pytest.approx(2.0 / 3.0)
    _, node = insertion_voltage.run_get_node(
        energy_host_eV=orm.Float(-100.0), energy_inserted_eV=orm.Float(-103.0), n_ions=orm.Int(1),
        reference_energy_eV_per_atom=orm.Float(-1.0), ion=orm.Str("Y"))
    assert node.exit_status == 320
    _, node = insertion_voltage.run_get_node(
        energy_host_eV=orm.Float(-100.0), energy_inserted_eV=orm.Float(-103.0), n_ions=orm.Int(0),
        reference_energy_eV_per_atom=orm.Float(-1.0), ion=orm.Str("Li"))
    assert node.exit_status == 321


@pytest.mark.parametrize(("parameters", "match"), [
    ({"ions": ["Xe"]}, "unknown working ion"), ({"n_ions": [0]}, "positive"), ({"supercell": [1, 2]}, "supercell"),
    ({"cell_filter": "unit"}, "cell_filter"), ({"fmax": 0}, "fmax"), ({"temperature": 300}, "unknown parameter"),
])
def test_invalid_parameters_are_rejected(parameters, match):
    builder = InsertionCalculation.get_builder()
    with pytest.raises(ValueError, match=match):
        builder.parameters = orm.Dict(parameters)


def test_prepare_for_submission_writes_host_and_config(battgen_code, tmp_path):
    density = orm.SinglefileData.from_string("fake density", filename="CHGCAR").store()
    process = instantiate_process(get_manager().get_runner(), InsertionCalculation, code=battgen_code,
                                  structure=orm.StructureData(pymatgen=rutile_tio2()),
                                  parameters=orm.Dict({"ions": ["Mg"], "n_ions": [1, 2]}), charge_density=density)
    with SandboxFolder() as folder:
        calcinfo = process.prepare_for_submission(folder)
        with folder.open("config.yaml") as handle:
            config = yaml.safe_load(handle)
        with folder.open(calc.HOST_FILENAME, "rb") as handle:
            (tmp_path / "host.jsonl.gz").write_bytes(handle.read())
    from battgen.batch import StructureBatch

    host = StructureBatch.read(tmp_path / "host.jsonl.gz")
    assert host.row_ids == ["host"] and host.structures[0].composition.reduced_formula == "TiO2"
    assert config == {"input": calc.HOST_FILENAME, "progress": False, "ions": ["Mg"], "n_ions": [1, 2],
                      "bader": {"density_file": "CHGCAR"}}
    assert calcinfo.local_copy_list == [(density.uuid, "CHGCAR", "CHGCAR")]


def test_protocols():
    assert set(InsertionPotentialWorkChain.get_available_protocols()) == {"fast", "balanced", "stringent"}
    fast = InsertionPotentialWorkChain.get_protocol_inputs("fast")
    stringent = InsertionPotentialWorkChain.get_protocol_inputs("stringent")
    fmax = [inputs["insertion"]["parameters"]["fmax"] for inputs in (fast, stringent)]
    assert fmax[0] > fmax[1] == 0.02  # seed 001's DFT force criterion (from relax_base.yaml)
    with pytest.raises(UnknownProtocolKeyError):
        InsertionPotentialWorkChain.get_protocol_inputs("fast", overrides={"insertion": {"parameters": {"fmaxx": 1}}})


@pytest.mark.slow
def test_workchain_end_to_end_with_not_converged_restart(battgen_code):
    """Li into rutile (1×1×2) with CHGNet and 2 optimiser steps: the calculation ends 410 (not converged), the
    handler doubles max_steps, and after max_iterations the work chain gives up with the outputs of the last
    run still readable; a second run with enough steps finishes cleanly with V > 0."""
    overrides = {"max_iterations": 2, "insertion": {"parameters": {
        "max_steps": 2, "supercell": [1, 1, 2], "max_site_types": 1, "reference_energies_eV_per_atom": {"Li": -1.8978}}}}
    builder = InsertionPotentialWorkChain.get_builder_from_protocol(
        battgen_code, orm.StructureData(pymatgen=rutile_tio2()), protocol="fast", overrides=overrides)
    results, node = run_get_node(builder)
    calls = sorted(node.called, key=lambda n: n.ctime)
    assert [c.exit_status for c in calls] == [410, 410]
    assert [c.inputs.parameters["max_steps"] for c in calls] == [2, 4]
    assert node.exit_status == 401  # BaseRestartWorkChain: maximum iterations exceeded

    overrides["insertion"]["parameters"]["max_steps"] = 60
    del overrides["insertion"]["parameters"]["reference_energies_eV_per_atom"]  # bulk Li relaxed with CHGNet
    builder = InsertionPotentialWorkChain.get_builder_from_protocol(
        battgen_code, orm.StructureData(pymatgen=rutile_tio2()), protocol="fast", overrides=overrides)
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    parameters = results["output_parameters"]
    row = parameters["rows"][0]
    assert row["ion"] == "Li" and row["channel"] == "channel-1" and row["voltage_V"] > 0
    assert parameters["references"][0].startswith("Li: bulk Li")
    assert parameters["bader"] is None
    assert results["inserted_structures"].n_rows == 1
    assert results["table"].get_content().splitlines()[0].startswith("host,ion,n_ions,channel")
    # the calcfunction reproduces the CLI's voltage from the same energies (MLIP energies here)
    voltage = insertion_voltage(energy_host_eV=orm.Float(row["energy_host_eV"]),
                                energy_inserted_eV=orm.Float(row["energy_inserted_eV"]), n_ions=orm.Int(1),
                                reference_energy_eV_per_atom=orm.Float(row["reference_energy_eV_per_atom"]),
                                ion=orm.Str("Li"))["voltage"]
    assert voltage.value == pytest.approx(row["voltage_V"], abs=1e-9)
