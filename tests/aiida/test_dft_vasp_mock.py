"""``battgen.dft.relax`` with engine VASP, without VASP: aiida-vasp's own ``mock-vasp`` executable replays real
recorded VASP outputs (pymatgen's Li bcc relaxation, shared data) by the hash of the parsed INCAR/POSCAR/KPOINTS.

The registry is built at test time in a tmp dir, in aiida-vasp's record/replay way: a first run of the work
chain uses ``mock-vasp`` with ``MOCK_VASP_VASP_CMD`` pointing at a stand-in "VASP" that hands out recorded
outputs (first a run killed after two ionic steps — truncated vasprun.xml/OUTCAR, as a wall-time kill leaves
them — then the complete run); mock-vasp files each calculation under the hash of its inputs. A second run
uses strict ``mock-vasp`` (no command: unknown inputs fail) and is replayed from the registry alone.
In both, aiida-vasp's ``handler_unfinished_calc_ionic`` restarts the killed run from its last geometry.

POTCARs are fake, written here with just the header fields aiida-vasp parses (no licensed content), and an
archive of the run is checked to hold none of them.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import shutil
import stat
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node

pytestmark = [pytest.mark.dft, pytest.mark.shared_data]

FIXTURE = Path("vasp_fixtures_pymatgen") / "fixtures" / "relaxation"
FAKE_POTCAR_SENTINEL = "BATTGEN-FAKE-POTCAR-NOT-VASP-DATA"
FAKE_FAMILY = "battgen-fake-PBE"
LI_FINAL_ENERGY_EV = -1.92459954  # the recorded run's energy(sigma->0) of the last ionic step
LI_FINAL_STRESS_KBAR = -1.15048158


def _fake_potcar(symbol: str, element: str, zval: float, date: str = "23Jan2001") -> str:
    """Header lines only: what parsevasp/aiida-vasp read (TITEL, VRHFIN, LEXCH, ZVAL, ENMAX); no PAW data."""
    title = " ".join(["PAW_PBE", symbol, date])
    return textwrap.dedent(f"""\
          {title}
         {zval:.5f}
         parameters from PSCTR are:
           VRHFIN ={element}: fake
           LEXCH  = PE
           TITEL  = {title}
           POMASS =    6.941; ZVAL   =    {zval:.3f}
           ENMAX  =  499.034; ENMIN  =  374.276 eV
         END of PSCTR-controll parameters
         {FAKE_POTCAR_SENTINEL}
         End of Dataset
        """)


@pytest.fixture
def fake_potcar_family(aiida_profile, tmp_path):
    from aiida_vasp.data.potcar import PotcarData

    root = tmp_path / "potcars" / "fake_PBE"
    (root / "Li_sv").mkdir(parents=True)
    (root / "Li_sv" / "POTCAR").write_text(_fake_potcar("Li_sv", "Li", 3.0))
    PotcarData.upload_potcar_family(str(root.parent), FAKE_FAMILY, "fake POTCARs for tests", stop_if_existing=False)
    return FAKE_FAMILY


def _killed_copy(source: Path, target: Path) -> None:
    """The recorded run as a wall-time kill during ionic step 3 leaves it: files cut there, CONTCAR of step 2."""
    from pymatgen.io.vasp import Poscar, Vasprun

    target.mkdir(parents=True)
    xml = gzip.decompress((source / "vasprun.xml.gz").read_bytes()).decode()
    cut = xml.index("</calculation>", xml.index("</calculation>") + 1) + len("</calculation>\n")
    (target / "vasprun.xml").write_text(xml[:cut])
    outcar = (source / "OUTCAR").read_text()
    (target / "OUTCAR").write_text(outcar[: outcar.index("Iteration    3(   1)")])
    step2 = Vasprun(str(source / "vasprun.xml.gz"), parse_potcar_file=False).structures[1]
    Poscar(step2).write_file(target / "CONTCAR")


def _complete_copy(source: Path, target: Path) -> None:
    from pymatgen.io.vasp import Poscar, Vasprun

    target.mkdir(parents=True)
    (target / "vasprun.xml").write_bytes(gzip.decompress((source / "vasprun.xml.gz").read_bytes()))
    shutil.copy(source / "OUTCAR", target / "OUTCAR")
    Poscar(Vasprun(str(source / "vasprun.xml.gz"), parse_potcar_file=False).final_structure).write_file(
        target / "CONTCAR")


STAND_IN_VASP = '''#!{python}
"""Stand-in for the VASP binary while recording: hand out the next recorded output folder."""
import pathlib, shutil
queue = pathlib.Path({queue!r})
pending = [line for line in queue.read_text().splitlines() if line]
source = pending.pop(0) if len(pending) > 1 else pending[0]  # the last one repeats
queue.write_text("\\n".join(pending) + "\\n")
for path in pathlib.Path(source).iterdir():
    shutil.copy(path, pathlib.Path.cwd() / path.name)
print("stand-in VASP: copied", source)
'''


@pytest.fixture
def mock_vasp_setup(shared_data, tmp_path, aiida_localhost):
    """Registry dir, recorded output folders, a stand-in VASP, and mock-vasp codes (recording / strict)."""
    mock = shutil.which("mock-vasp", path=str(Path(sys.executable).parent)) or shutil.which("mock-vasp")
    if mock is None:
        pytest.skip("aiida-vasp's mock-vasp executable is not installed")
    recorded = tmp_path / "recorded"
    _killed_copy(shared_data / FIXTURE, recorded / "killed")
    _complete_copy(shared_data / FIXTURE, recorded / "complete")
    queue = tmp_path / "queue.txt"
    queue.write_text(f"{recorded / 'killed'}\n{recorded / 'complete'}\n")
    stand_in = tmp_path / "stand_in_vasp.py"
    stand_in.write_text(STAND_IN_VASP.format(python=sys.executable, queue=str(queue)))
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IEXEC)
    registry = tmp_path / "registry"
    registry.mkdir()

    def code(label: str, record: bool) -> orm.InstalledCode:
        prepend = f"export MOCK_VASP_REG_BASE={registry}\n"
        prepend += f"export MOCK_VASP_VASP_CMD={stand_in}\n" if record else "unset MOCK_VASP_VASP_CMD\n"
        return orm.InstalledCode(label=label, computer=aiida_localhost, filepath_executable=mock,
                                 default_calc_job_plugin="vasp.vasp", prepend_text=prepend).store()

    return {"registry": registry, "recording": code("mock-vasp-record", True),
            "strict": code("mock-vasp-strict", False), "recorded": recorded}


def _li_structure(shared_data) -> orm.StructureData:
    from pymatgen.io.vasp import Vasprun

    start = Vasprun(str(shared_data / FIXTURE / "vasprun.xml.gz"), parse_potcar_file=False).initial_structure
    return orm.StructureData(pymatgen=start)


def _run(code, structure, family):
    from aiida_battgen.workchains.dft import DftRelaxWorkChain

    builder = DftRelaxWorkChain.get_builder_from_protocol(
        code, structure, engine="vasp", potential_family=family,
        # The recorded run stopped on an energy criterion with a 3.8 % volume change in its last step, so
        # aiida-vasp's "last two steps" check would rightly ask for more relaxation than one record holds.
        overrides={"vasp": {"relax_settings": {"convergence_mode": "inout"}}},
        options={"resources": {"num_machines": 1, "num_mpiprocs_per_machine": 1}, "withmpi": False,
                 "max_wallclock_seconds": 600})
    return run_get_node(builder)


def _vasp_calcs(node) -> list[orm.CalcJobNode]:
    calcs = [n for n in node.called_descendants if isinstance(n, orm.CalcJobNode)]
    return sorted(calcs, key=lambda n: n.ctime)


def test_vasp_protocol_is_mp_compatible(aiida_profile, shared_data, fake_potcar_family, mock_vasp_setup):
    """The builder carries MPRelaxSet's settings (ENCUT 520 eV, ISPIN 2, MAGMOM by element), forces to
    0.02 eV/Å as intent, POTCAR family by name; Hubbard U from pymatgen for an oxide of Fe."""
    from pymatgen.core import Lattice, Structure

    from aiida_battgen.workchains.dft import DftRelaxWorkChain

    code = mock_vasp_setup["strict"]
    builder = DftRelaxWorkChain.get_builder_from_protocol(code, _li_structure(shared_data), engine="vasp",
                                                          potential_family=fake_potcar_family)
    incar = builder.vasp.vasp.parameters["incar"]
    assert incar["encut"] == 520 and incar["ispin"] == 2 and "ibrion" not in incar
    assert builder.vasp.relax_settings["force_cutoff"] == 0.02
    assert builder.vasp.vasp.potential_family.value == fake_potcar_family
    assert builder.vasp.vasp.potential_mapping.get_dict() == {"Li": "Li_sv"}
    feo = Structure(Lattice.cubic(4.33), ["Fe"] * 4 + ["O"] * 4,
                    [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                     [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5]])
    oxide = DftRelaxWorkChain.get_builder_from_protocol(code, orm.StructureData(pymatgen=feo), engine="vasp",
                                                        potential_family=fake_potcar_family)
    assert oxide.vasp.vasp.ldau_mapping["mapping"] == {"Fe": ["d", 5.3]}  # MPRelaxSet's U for Fe in oxides
    assert oxide.vasp.vasp.magmom_mapping.get_dict() == {"Fe": 5.0, "O": 0.6}
    assert DftRelaxWorkChain.get_protocol_inputs()["vasp"]["potential_family"] == "PBE.54"


def test_mock_vasp_record_then_strict_replay_with_a_handled_failure(
        aiida_profile, shared_data, fake_potcar_family, mock_vasp_setup):
    from aiida_vasp.calcs.vasp import VaspCalculation

    structure = _li_structure(shared_data)
    recorded_outcars = {(mock_vasp_setup["recorded"] / case / "OUTCAR").read_bytes() for case in ("killed", "complete")}
    for pass_name in ("recording", "strict"):
        results, node = _run(mock_vasp_setup[pass_name], structure, fake_potcar_family)
        assert node.is_finished_ok, f"{pass_name}: {node.exit_status} {node.exit_message}"
        calcs = _vasp_calcs(node)
        # killed run -> handler restarts from its last geometry -> complete run, then the relax loop and SP
        assert calcs[0].exit_status == VaspCalculation.exit_codes.ERROR_DID_NOT_FINISH.status
        assert all(c.exit_status == 0 for c in calcs[1:]) and len(calcs) >= 2
        base = calcs[0].caller
        assert any("Continuing geometry optimization" in log.message
                   for log in orm.Log.collection.get_logs_for(base))
        assert results["total_energy"].value == pytest.approx(LI_FINAL_ENERGY_EV, abs=1e-6)
        assert results["energy_per_atom"].value == pytest.approx(LI_FINAL_ENERGY_EV, abs=1e-6)
        stress = results["stress"].get_array("stress")
        assert np.diag(stress) == pytest.approx([LI_FINAL_STRESS_KBAR / 10] * 3, abs=1e-6)  # kbar -> GPa
        assert results["forces"].get_array("forces").shape == (1, 3)
        assert results["converged"].get_dict() == {"ionic": True, "electronic": True}
        settings = results["dft_settings"].get_dict()
        assert settings["engine"] == "vasp" and settings["encut_eV"] == 520.0 and settings["hubbard_u"] == {}
        assert results["relaxed_structure"].get_pymatgen_structure().volume < structure.get_pymatgen_structure().volume
        if pass_name == "recording":
            from pymatgen.io.vasp import Incar

            recorded = sorted(mock_vasp_setup["registry"].glob("**/out"))
            assert len(recorded) >= 2  # one registry entry per distinct input hash
            # What VASP was asked to do: MP settings and the seed's force criterion, written by aiida-vasp.
            incars = [Incar.from_file(out.parent / "inp" / "INCAR") for out in recorded]
            assert all(i["ENCUT"] == 520 and i["ISPIN"] == 2 for i in incars)
            assert any(i.get("EDIFFG") == -0.02 and i.get("ISIF") == 3 for i in incars)

    # Licensed content never leaves: an archive of the run holds no POTCAR file (the fake POTCAR's body is
    # nowhere); the scanner's POTCAR-header pattern only fires on the recorded OUTCARs, which echo the header.
    from aiida.tools.archive import create_archive

    archive = Path(str(mock_vasp_setup["registry"])).parent / "vasp-run.aiida"
    create_archive([node], filename=archive)
    with zipfile.ZipFile(archive) as bundle:
        blobs = {info.filename: bundle.read(info) for info in bundle.infolist() if not info.is_dir()}
    scan = _load_secret_scanner()
    findings = scan(blobs, extra=FAKE_POTCAR_SENTINEL.encode())
    assert not [f for f in findings if f.endswith("the sentinel key")]
    flagged = {f.split(": ")[0] for f in findings}
    assert all(blobs[name] in recorded_outcars for name in flagged), findings
    assert any(b"TITEL" in blob and blob in recorded_outcars for blob in blobs.values())  # OUTCARs are in it


def _load_secret_scanner():
    spec = importlib.util.spec_from_file_location("battgen_test_secrets",
                                                  Path(__file__).resolve().parents[1] / "test_secrets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.scan


def test_fake_potcar_is_a_header_only():
    """The fake POTCAR parses like a real header (symbol, functional) but holds no PAW data blocks."""
    from aiida_vasp.parsers.content_parsers.potcar import PotcarParser

    text = _fake_potcar("Li_sv", "Li", 3.0)
    assert FAKE_POTCAR_SENTINEL in text and len(text.splitlines()) < 15
    metadata = PotcarParser(handler=io.StringIO(text)).metadata
    assert (metadata.symbol, metadata.element) == ("Li_sv", "Li")
