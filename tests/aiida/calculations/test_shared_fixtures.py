"""The shared ``generate_calc_job`` fixture (tests/conftest.py) writes a CalcJob's inputs without running it."""

from aiida import orm


def test_generate_calc_job_writes_the_config(generate_calc_job, battgen_code):
    from pymatgen.core import Lattice, Structure

    from aiida_battgen.data.batch import StructureBatchData
    from battgen.batch import StructureBatch

    licl = Structure(Lattice.cubic(5.13), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    inputs = {"code": battgen_code, "structures": StructureBatchData(StructureBatch.from_structures([licl])),
              "parameters": orm.Dict({"fmax": 0.1})}
    folder, calcinfo = generate_calc_job("battgen.mlip.relax", inputs)
    assert "config.yaml" in folder.get_content_list()
    assert calcinfo.codes_info[0].cmdline_params[:2] == ["relax", "--config"]
