"""MlipRelaxParser on retrieved folders recorded once from the real ``battgen relax`` CLI (CHGNet).

Re-record with ``.venv/bin/python tests/aiida/fixtures/relax/record.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.plugins import ParserFactory

from aiida_battgen.calculations.relax import MlipRelaxCalculation
from aiida_battgen.parsers.relax import MlipRelaxParser

FIXTURES = Path(__file__).parent / "fixtures" / "relax"
EXIT = MlipRelaxCalculation.exit_codes


@pytest.fixture
def parse_case(aiida_profile, aiida_localhost):
    """Parse the recorded retrieved folder ``case``: returns (outputs, calcfunction node of the parse)."""

    def _parse(case: str | Path):
        node = orm.CalcJobNode(computer=aiida_localhost, process_type="aiida.calculations:battgen.mlip.relax")
        node.set_option("resources", {"num_machines": 1, "num_mpiprocs_per_machine": 1})
        node.set_option("error_filename", "battgen.err")
        node.store()
        retrieved = orm.FolderData()
        retrieved.base.repository.put_object_from_tree(str(FIXTURES / case))  # an absolute path wins
        retrieved.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label="retrieved")
        retrieved.store()
        return MlipRelaxParser.parse_from_node(node, store_provenance=False)

    return _parse


def test_parser_entry_point():
    assert ParserFactory("battgen.mlip.relax") is MlipRelaxParser


def test_success(parse_case):
    results, calc = parse_case("success")
    assert calc.is_finished_ok, calc.exit_message
    batch = results["relaxed_structures"].get_batch()
    assert batch.row_ids == ["si2", "licl"]
    params = results["output_parameters"].get_dict()
    assert params["counts"] == {"converged": 2, "not_converged": 0, "exploded": 0, "unsupported_element": 0}
    assert params["mlip"] == "chgnet" and params["model_name"] == "CHGNet-0.3.0"
    assert len(params["weights_sha256"]) == 64 and params["package_version"]
    assert params["fmax_eV_per_A"] == 0.05 and params["wall_time_s"] > 0
    arrays = results["output_arrays"]
    assert set(arrays.get_arraynames()) >= {"energy_eV", "energy_per_atom_eV", "max_force_eV_per_A", "converged", "n_steps"}
    # recorded CHGNet 0.3.0 values: diamond Si ≈ -5.31 eV/atom, rocksalt LiCl ≈ -3.98 eV/atom
    np.testing.assert_allclose(arrays.get_array("energy_per_atom_eV"), batch.column("energy_per_atom_eV"))
    assert arrays.get_array("energy_per_atom_eV")[0] == pytest.approx(-5.31, abs=0.03)
    assert arrays.get_array("energy_per_atom_eV")[1] == pytest.approx(-3.98, abs=0.03)
    assert np.all(arrays.get_array("max_force_eV_per_A") < 0.05)
    assert params["min_energy_per_atom_eV"] == pytest.approx(arrays.get_array("energy_per_atom_eV").min())


def test_not_converged_is_400_with_outputs(parse_case):
    results, calc = parse_case("not_converged")
    assert calc.exit_status == EXIT.WARNING_NOT_CONVERGED.status
    assert "2 row(s)" in calc.exit_message
    assert results["relaxed_structures"].get_batch().column("relax_status") == ["not_converged", "not_converged"]
    assert list(results["output_arrays"].get_array("n_steps")) == [3, 3]
    assert not results["output_arrays"].get_array("converged").any()


def test_exploded_is_401_and_keeps_the_starting_structure(parse_case):
    results, calc = parse_case("exploded")
    assert calc.exit_status == EXIT.WARNING_EXPLODED.status
    batch = results["relaxed_structures"].get_batch()
    meta, structure = batch.get("si2-sparse")
    assert meta["relax_status"] == "exploded" and "volume changed" in meta["relax_message"]
    assert structure.volume == pytest.approx(5.43**3)  # starting cell kept
    energies = results["output_arrays"].get_array("energy_eV")
    assert np.isnan(energies[1]) and np.isfinite(energies[0])


def test_unsupported_is_402(parse_case):
    results, calc = parse_case("unsupported")
    assert calc.exit_status == EXIT.WARNING_UNSUPPORTED_ELEMENTS.status
    assert "Og" in calc.exit_message
    assert results["output_parameters"]["unsupported_elements"] == ["Og"]


@pytest.mark.parametrize(
    "case, exit_code, fragment",
    [
        ("missing_file", EXIT.ERROR_MISSING_OUTPUT_FILES, "relaxed.jsonl.gz"),
        ("truncated_file", EXIT.ERROR_OUTPUT_UNREADABLE, "truncated"),
        ("cli_invalid_input", EXIT.ERROR_CLI_INVALID_INPUT, "optimizer"),
        ("cli_failed", EXIT.ERROR_CLI_FAILED, "UnpicklingError"),
    ],
)
def test_failures_map_to_3xx_without_outputs(parse_case, case, exit_code, fragment):
    results, calc = parse_case(case)
    assert calc.exit_status == exit_code.status
    assert fragment in calc.exit_message
    assert "relaxed_structures" not in results


def test_summary_missing_is_302(parse_case, tmp_path):
    """The job was killed before the CLI wrote anything but stderr."""
    (tmp_path / "battgen.err").write_text("Killed\n")
    results, calc = parse_case(tmp_path)
    assert calc.exit_status == EXIT.ERROR_SUMMARY_MISSING.status
    assert results == {}
