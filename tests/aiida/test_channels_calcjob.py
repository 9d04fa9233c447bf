"""ChannelAnalysisCalculation: constants agree with the science layer, validation, written inputs, an
end-to-end run of the real ``battgen channels`` CLI on localhost, and the parser's failure modes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from aiida import orm
from aiida.common.folders import SandboxFolder
from aiida.engine import run_get_node
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager
from aiida.plugins import CalculationFactory, ParserFactory

from aiida_battgen.calculations import channels as calc
from aiida_battgen.calculations.channels import ChannelAnalysisCalculation
from aiida_battgen.data.batch import StructureBatchData
from battgen.batch import StructureBatch
from battgen.channels.reference_structures import hollandite_mno2, olivine_lifepo4, rutile_tio2


def test_entry_points_and_one_contract_for_both_layers():
    from battgen.channels import analysis
    from battgen.contracts import channels as contract

    assert CalculationFactory("battgen.channels") is ChannelAnalysisCalculation
    assert ParserFactory("battgen.channels").__name__ == "ChannelAnalysisParser"
    assert ChannelAnalysisCalculation.OUTPUT_FILES == contract.OUTPUT_FILES == (
        analysis.OUTPUT_BATCH, analysis.OUTPUT_TABLE_CSV, analysis.OUTPUT_TABLE_JSON, analysis.OUTPUT_FIGURE)
    assert contract.ChannelSettings.parameter_fields() == ["engine", "probe_radius_A", "mobile_ion", "radii",
                                                            "grid_spacing_A"]
    assert calc.validate_channel_parameters(orm.Dict({"engine": "cavd", "probe_radius_A": 0})) is None


def test_aiida_layer_does_not_import_torch():
    code = ("import sys, aiida_battgen.calculations.channels, aiida_battgen.parsers.channels, "
            "aiida_battgen.calculations.insertion, aiida_battgen.parsers.insertion, "
            "aiida_battgen.workchains.insertion, "
            "aiida_battgen.calculations.functions.insertion_voltage; "
            "bad = [m for m in ('torch', 'chgnet') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_exit_codes_below_400_invalidate_cache():
    for code in ChannelAnalysisCalculation.spec().exit_codes.values():
        assert code.invalidates_cache == (code.status < 400), code


@pytest.mark.parametrize(("parameters", "match"), [
    ({"probe": 1.0}, r"unknown parameter\(s\) \['probe'\]"),
    ({"probe_radius_A": -0.1}, r"probe_radius_A must be a non-negative number \(Å\)"),
    ({"radii": "ionic"}, "radii must be"),
    ({"engine": "voronoi"}, "engine must be"),
    ({"grid_spacing_A": True}, "got a bool"),
])
def test_invalid_parameters_are_rejected(aiida_profile, battgen_code, parameters, match):
    builder = ChannelAnalysisCalculation.get_builder()
    with pytest.raises(ValueError, match=match):
        builder.parameters = orm.Dict(parameters)


def test_prepare_for_submission(aiida_profile, battgen_code):
    structures = StructureBatchData(StructureBatch.from_structures([rutile_tio2()])).store()
    process = instantiate_process(get_manager().get_runner(), ChannelAnalysisCalculation, code=battgen_code,
                                  structures=structures, parameters=orm.Dict({"mobile_ion": "Li"}))
    with SandboxFolder() as folder:
        calcinfo = process.prepare_for_submission(folder)
        with folder.open("config.yaml") as handle:
            config = yaml.safe_load(handle)
    assert config == {"input": calc.INPUT_FILENAME, "progress": False, "mobile_ion": "Li"}
    assert calcinfo.codes_info[0].cmdline_params == ["channels", "--config", "config.yaml", "--workdir", ".", "--threads", "1"]
    assert calcinfo.local_copy_list == [(structures.uuid, StructureBatchData.FILENAME, calc.INPUT_FILENAME)]


def test_channels_end_to_end_on_localhost(aiida_profile, battgen_code):
    batch = StructureBatch.from_structures(
        [hollandite_mno2(), rutile_tio2(), olivine_lifepo4()],
        [{"row_id": "hollandite"}, {"row_id": "rutile"}, {"row_id": "olivine"}])
    results, node = run_get_node(ChannelAnalysisCalculation, code=battgen_code, structures=StructureBatchData(batch),
                                 parameters=orm.Dict({"mobile_ion": "Li"}))
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    parameters = results["output_parameters"]
    assert parameters["n_analysed"] == 3 and parameters["rows_per_dimensionality"] == {"1": 3}
    assert parameters["channel_radius_A_max"] == pytest.approx(1.2305, abs=0.005)  # hollandite 2×2 tunnel
    arrays = results["output_arrays"]
    radii = dict(zip(arrays.get_array("row_ids"), arrays.get_array("channel_radius_A")))
    assert radii["rutile"] == pytest.approx(0.4739, abs=0.005) and radii["olivine"] == pytest.approx(0.618, abs=0.005)
    analysed = results["analysed_structures"].get_batch()
    assert analysed.row_ids == ["hollandite", "rutile", "olivine"]
    assert analysed.column("channel_dimensionality") == [1, 1, 1]
    assert results["table"].get_content().startswith("row_id,formula,largest_included_sphere_A")
    assert results["figure"].base.repository.get_object_content(results["figure"].filename, mode="rb")[:4] == b"\x89PNG"


def test_failed_rows_give_410_and_rejected_input_303(aiida_profile, battgen_code):
    """A row with nothing but the mobile ion cannot be analysed: the other rows still are, the job ends with
    410 and its outputs attached (failure reasons in output_parameters). A mobile ion that is not an element
    is refused at submit by the command's settings model: no CalcJob at all."""
    from pymatgen.core import Lattice, Structure

    batch = StructureBatch.from_structures([rutile_tio2(), Structure(Lattice.cubic(3.5), ["Li"], [[0, 0, 0]])])
    results, node = run_get_node(ChannelAnalysisCalculation, code=battgen_code, structures=StructureBatchData(batch),
                                 parameters=orm.Dict({"mobile_ion": "Li"}))
    assert node.exit_status == 410 and results["output_parameters"]["n_failed"] == 1
    assert "nothing left" in next(iter(results["output_parameters"]["failures"].values()))
    calcjobs = orm.QueryBuilder().append(orm.CalcJobNode).count()
    with pytest.raises(ValueError, match=r"parameters.mobile_ion: must be an element symbol, got 'Xx'"):
        run_get_node(ChannelAnalysisCalculation, code=battgen_code, structures=StructureBatchData(batch),
                     parameters=orm.Dict({"mobile_ion": "Xx"}))
    assert orm.QueryBuilder().append(orm.CalcJobNode).count() == calcjobs
