"""MlipRelaxCalculation: input validation, written files, cache invalidation, and end-to-end runs of the
real ``battgen relax`` CLI (CHGNet, 2-atom cells) on localhost."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml
from aiida import orm
from aiida.common.folders import SandboxFolder
from aiida.engine import run_get_node
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager
from aiida.plugins import CalculationFactory
from pymatgen.core import Lattice, Structure

from aiida_battgen.calculations.relax import (
    CELL_FILTERS,
    INPUT_FILENAME,
    OPTIMIZERS,
    OUTPUT_FILENAME,
    RECORDS_FILENAME,
    MlipRelaxCalculation,
)
from aiida_battgen.data.batch import StructureBatchData
from battgen.batch import StructureBatch
from battgen.cli import PROGRESS_FILENAME, SUMMARY_FILENAME


def si2_primitive() -> Structure:
    return Structure(Lattice.from_parameters(3.84, 3.84, 3.84, 60, 60, 60), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])


def licl_primitive() -> Structure:
    return Structure(Lattice.from_parameters(3.63, 3.63, 3.63, 60, 60, 60), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="session")
def chgnet_model():
    from chgnet.model import CHGNet

    return CHGNet.load(verbose=False, use_device="cpu")


def test_entry_point_and_one_contract_for_both_layers():
    """Science command, CalcJob and parser read the same declarations (battgen.contracts.relax)."""
    from aiida_battgen.calculations import relax as calculation
    from aiida_battgen.parsers import relax as parser
    from battgen.contracts import relax as contract
    from battgen.mlip import relax as science

    assert CalculationFactory("battgen.mlip.relax") is MlipRelaxCalculation
    assert MlipRelaxCalculation.OUTPUT_FILES == (contract.OUTPUT_FILENAME, contract.RECORDS_FILENAME)
    assert parser.RELAX_STATUSES is science.RELAX_STATUSES is contract.RELAX_STATUSES
    assert calculation.validate_relax_parameters(orm.Dict({"engine": "batched"})) is None
    assert science.RELAX_DEFAULTS == contract.RelaxSettings.defaults()
    assert set(CELL_FILTERS) == set(science.CELL_FILTERS) and set(OPTIMIZERS) == set(science.OPTIMIZERS)
    help_text = MlipRelaxCalculation.spec().inputs["parameters"].help
    assert "fmax (eV/Å; a positive number; default 0.05)" in help_text and "input" not in help_text.split(": ")[0]


def test_aiida_layer_does_not_import_torch():
    code = (
        "import sys, aiida_battgen.calculations.relax, aiida_battgen.parsers.relax, "
        "aiida_battgen.workchains.relax_base; "
        "bad = [m for m in ('torch', 'battgen.mlip', 'chgnet') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_exit_codes_below_400_invalidate_cache():
    exit_codes = MlipRelaxCalculation.spec().exit_codes
    assert {300, 301, 302, 303, 304, 400, 401, 402} <= {code.status for code in exit_codes.values()}
    for code in exit_codes.values():
        assert code.invalidates_cache == (code.status < 400), code


@pytest.mark.parametrize(
    "parameters, match",
    [
        ({"fmax": 0.05, "temperature": 300}, r"unknown parameter\(s\) \['temperature'\]"),
        ({"fmax": -1.0}, r"parameters.fmax must be a positive number \(eV/Å\), got -1.0"),
        ({"max_steps": 1.5}, "parameters.max_steps must be an integer"),
        ({"max_steps": True}, "got a bool"),
        ({"mlip": "mace"}, "unknown MLIP 'mace'; available: chgnet, m3gnet, nequip, sevennet"),
        ({"input": "other.jsonl.gz"}, "parameters.input: set by the job"),
        ({"cell_filter": "unit"}, "cell_filter"),
        ({"optimizer": "SD"}, "optimizer"),
    ],
)
def test_invalid_parameters_are_rejected(aiida_profile, battgen_code, small_batch, parameters, match):
    builder = MlipRelaxCalculation.get_builder()
    builder.code = battgen_code
    builder.structures = StructureBatchData(small_batch)
    with pytest.raises(ValueError, match=match):  # the builder validates on assignment
        builder.parameters = orm.Dict(parameters)
    with pytest.raises(ValueError, match=match):
        run_get_node(MlipRelaxCalculation, code=battgen_code, structures=StructureBatchData(small_batch),
                     parameters=orm.Dict(parameters))


def test_prepare_for_submission_writes_config_and_copies_batch(aiida_profile, battgen_code, small_batch):
    structures = StructureBatchData(small_batch).store()
    inputs = {
        "code": battgen_code,
        "structures": structures,
        "parameters": orm.Dict({"mlip": "chgnet", "fmax": 0.1, "max_steps": 50, "cell_filter": None}),
        "metadata": {"options": {"resources": {"num_machines": 1}}},
    }
    runner = get_manager().get_runner()
    process = instantiate_process(runner, MlipRelaxCalculation, **inputs)
    with SandboxFolder() as folder:
        calcinfo = process.prepare_for_submission(folder)
        with folder.open("config.yaml") as handle:
            config = yaml.safe_load(handle)
    assert config == {"input": INPUT_FILENAME, "mlip": "chgnet", "fmax": 0.1, "max_steps": 50, "cell_filter": None}
    assert calcinfo.codes_info[0].cmdline_params == ["relax", "--config", "config.yaml", "--workdir", ".", "--threads", "1"]
    assert calcinfo.local_copy_list == [(structures.uuid, StructureBatchData.FILENAME, INPUT_FILENAME)]
    assert set(calcinfo.retrieve_list) == {SUMMARY_FILENAME, PROGRESS_FILENAME, "battgen.out", "battgen.err", OUTPUT_FILENAME,
                                        RECORDS_FILENAME}


@pytest.mark.slow
def test_relax_end_to_end_chgnet(aiida_profile, battgen_code, chgnet_model):
    batch = StructureBatch.from_structures(
        [si2_primitive(), licl_primitive()], [{"row_id": "si2", "source": "test"}, {"row_id": "licl"}]
    )
    results, node = run_get_node(
        MlipRelaxCalculation, code=battgen_code, structures=StructureBatchData(batch),
        parameters=orm.Dict({"mlip": "chgnet", "fmax": 0.05, "max_steps": 200}),
    )
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    relaxed = results["relaxed_structures"].get_batch()
    assert relaxed.row_ids == ["si2", "licl"]
    assert relaxed.get("si2")[0]["source"] == "test"  # incoming metadata survives
    assert all(status == "converged" for status in relaxed.column("relax_status"))

    energies = results["output_arrays"].get_array("energy_per_atom_eV")
    assert np.all(np.isfinite(energies))
    # The per-atom energy the CLI reports for Si is CHGNet's own prediction on the relaxed structure.
    si_meta, si_relaxed = relaxed.get("si2")
    direct = float(chgnet_model.predict_structure(si_relaxed)["e"])
    assert si_meta["energy_per_atom_eV"] == pytest.approx(direct, abs=2e-4)
    assert -5.5 < direct < -5.0  # CHGNet 0.3.0, diamond Si: about -5.31 eV/atom

    params = results["output_parameters"].get_dict()
    import chgnet

    from battgen.mlip.calculators import _pretrained_chgnet_file, sha256_of_file

    assert params["weights_sha256"] == sha256_of_file(_pretrained_chgnet_file("0.3.0"))
    assert params["package_version"] == chgnet.__version__
    assert params["counts"] == {"converged": 2, "not_converged": 0, "exploded": 0, "unsupported_element": 0}
    assert params["fmax_eV_per_A"] == 0.05


@pytest.mark.slow
def test_parent_folder_continues_from_the_checkpoint(aiida_profile, battgen_code):
    """A second job given the first one's work directory takes its finished row over and relaxes the new one."""
    first_batch = StructureBatch.from_structures([licl_primitive()], [{"row_id": "licl"}])
    parameters = orm.Dict({"mlip": "chgnet", "fmax": 0.05, "max_steps": 100})
    first, first_node = run_get_node(MlipRelaxCalculation, code=battgen_code,
                                     structures=StructureBatchData(first_batch), parameters=parameters)
    assert first_node.is_finished_ok, first_node.exit_message
    assert first["output_parameters"]["rows_from_checkpoint"] == 0
    both = StructureBatch.from_structures([licl_primitive(), si2_primitive()], [{"row_id": "licl"}, {"row_id": "si2"}])
    second, node = run_get_node(MlipRelaxCalculation, code=battgen_code, structures=StructureBatchData(both),
                                parameters=parameters, parent_folder=first_node.outputs.remote_folder)
    assert node.is_finished_ok, node.exit_message
    assert second["output_parameters"]["rows_from_checkpoint"] == 1
    assert second["relaxed_structures"].get_batch().row_ids == ["licl", "si2"]
    taken = second["relaxed_structures"].get_batch().get("licl")[0]["energy_eV"]
    assert taken == first["relaxed_structures"].get_batch().get("licl")[0]["energy_eV"]


@pytest.mark.slow
def test_unsupported_element_gives_402_with_partial_outputs(aiida_profile, battgen_code):
    oganesson = Structure(Lattice.cubic(4.0), ["Og"], [[0, 0, 0]])  # Z=118: beyond CHGNet's 94 elements
    batch = StructureBatch.from_structures([licl_primitive(), oganesson], [{"row_id": "licl"}, {"row_id": "og"}])
    results, node = run_get_node(
        MlipRelaxCalculation, code=battgen_code, structures=StructureBatchData(batch),
        parameters=orm.Dict({"max_steps": 100}),
    )
    assert node.exit_status == MlipRelaxCalculation.exit_codes.WARNING_UNSUPPORTED_ELEMENTS.status
    assert "Og" in node.exit_message
    relaxed = results["relaxed_structures"].get_batch()
    assert relaxed.column("relax_status") == ["converged", "unsupported_element"]
    assert "Og" in relaxed.get("og")[0]["relax_message"]
    arrays = results["output_arrays"]
    assert np.isnan(arrays.get_array("energy_eV")[1]) and np.isfinite(arrays.get_array("energy_eV")[0])
    assert results["output_parameters"]["unsupported_elements"] == ["Og"]


def test_invalid_input_batch_gives_303(aiida_profile, battgen_code, small_batch):
    """The CLI itself rejects a setting the AiiDA validator cannot check (a model file on the remote)."""
    results, node = run_get_node(
        MlipRelaxCalculation, code=battgen_code, structures=StructureBatchData(small_batch),
        parameters=orm.Dict({"model_path": "/nonexistent/weights.pth.tar"}),
    )
    assert node.exit_status == 303
    assert "model_path" in node.exit_message
    assert "relaxed_structures" not in results
