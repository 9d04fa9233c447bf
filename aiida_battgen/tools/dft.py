"""DFT set-up helpers: Debian's Quantum ESPRESSO pseudopotentials as an aiida-pseudo family, and the pw.x code.

Debian's ``quantum-espresso-data`` ships 71 UPF files in ``/usr/share/espresso/pseudo`` of mixed
functionals (LDA, PBEsol, BLYP, PBE) and no SSSP. :data:`DEBIAN_PBE_PSEUDOS` picks one **PBE** file per
element that has one, so that a family is one functional throughout (formation energies need that). Li,
Mg, Ti, Co and Al have no PBE file there (Li only PBEsol, Mg/Ti/Al only LDA) and are therefore not in the family.

Cutoffs (Ry) are modest values that keep tiny test cells fast while the total energy per atom is within
about 10 meV/atom of convergence for energy *differences* at these cutoffs; they follow the usual
recommendations for each kind of pseudopotential (norm-conserving: ρ = 4×wfc; ultrasoft/PAW: ρ = 8×wfc).
Use a proper family (SSSP via ``aiida-pseudo install sssp``) for production.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

DEBIAN_PSEUDO_DIR = Path("/usr/share/espresso/pseudo")
DEFAULT_QE_FAMILY = "battgen-debian-qe-pbe"
DEFAULT_PW_EXECUTABLE = "/usr/bin/pw.x"

# element -> (Debian UPF file, cutoff_wfc Ry, cutoff_rho Ry, kind)
DEBIAN_PBE_PSEUDOS: dict[str, tuple[str, float, float, str]] = {
    "B": ("B.pbe-n-kjpaw_psl.1.0.0.UPF", 35.0, 280.0, "PAW (pslibrary 1.0.0)"),
    "C": ("C.pbe-rrkjus.UPF", 30.0, 240.0, "ultrasoft RRKJ"),
    "Cr": ("Cr.pbe-spn-kjpaw_psl.1.0.0.UPF", 45.0, 360.0, "PAW (pslibrary 1.0.0)"),
    "Cu": ("Cu.pbe-kjpaw.UPF", 40.0, 320.0, "PAW"),
    "Fe": ("Fe.pbe-nd-rrkjus.UPF", 40.0, 320.0, "ultrasoft RRKJ, nonlinear core correction"),
    "Ge": ("Ge.pbe-kjpaw.UPF", 35.0, 280.0, "PAW"),
    "H": ("H.pbe-kjpaw.UPF", 35.0, 280.0, "PAW"),
    "I": ("I.pbe-n-kjpaw_psl.1.0.0.UPF", 35.0, 280.0, "PAW (pslibrary 1.0.0)"),
    "N": ("N.pbe-n-rrkjus_psl.1.0.0.UPF", 40.0, 320.0, "ultrasoft (pslibrary 1.0.0)"),
    "Ni": ("Ni.pbe-nd-rrkjus.UPF", 40.0, 320.0, "ultrasoft RRKJ, nonlinear core correction"),
    "O": ("O.pbe-rrkjus.UPF", 35.0, 280.0, "ultrasoft RRKJ"),
    "Si": ("Si.pbe-rrkj.UPF", 20.0, 160.0, "norm-conserving RRKJ"),  # rho 160 Ry: SiC shares C's US grid
}


class PseudoSetupError(RuntimeError):
    """The Debian pseudopotentials or pw.x are not installed, or an element has no PBE file."""


def debian_pseudo_cutoffs(elements: list[str] | None = None) -> dict[str, dict[str, float]]:
    """The cutoffs (Ry) stated for each element of the family, in aiida-pseudo's format."""
    chosen = sorted(elements or DEBIAN_PBE_PSEUDOS)
    missing = [el for el in chosen if el not in DEBIAN_PBE_PSEUDOS]
    if missing:
        raise PseudoSetupError(f"no PBE pseudopotential from Debian for {', '.join(missing)}; "
                               f"available: {', '.join(sorted(DEBIAN_PBE_PSEUDOS))}")
    return {el: {"cutoff_wfc": DEBIAN_PBE_PSEUDOS[el][1], "cutoff_rho": DEBIAN_PBE_PSEUDOS[el][2]} for el in chosen}


def install_debian_qe_family(label: str = DEFAULT_QE_FAMILY, pseudo_dir: Path | str = DEBIAN_PSEUDO_DIR):
    """Install (or return the existing) aiida-pseudo ``pseudo.family.cutoffs`` family ``label`` made of the
    PBE UPFs of :data:`DEBIAN_PBE_PSEUDOS`, with their cutoffs (Ry, stringency ``normal``).

    Same effect as ``aiida-pseudo install family <dir> <label> -F pseudo.family.cutoffs -P pseudo.upf`` on
    a folder holding just these files, followed by ``family.set_cutoffs``.
    """
    from aiida.common.exceptions import NotExistent
    from aiida.orm import QueryBuilder
    from aiida.plugins import DataFactory, GroupFactory

    family_class = GroupFactory("pseudo.family.cutoffs")
    try:
        return QueryBuilder().append(family_class, filters={"label": label}).one()[0]
    except NotExistent:
        pass
    except Exception:  # noqa: BLE001 - MultipleObjectsError: use the first
        return QueryBuilder().append(family_class, filters={"label": label}).first()[0]

    pseudo_dir = Path(pseudo_dir)
    absent = [name for name, *_ in DEBIAN_PBE_PSEUDOS.values() if not (pseudo_dir / name).is_file()]
    if absent:
        raise PseudoSetupError(
            f"{pseudo_dir} lacks {', '.join(absent)}: apt-get install quantum-espresso-data")
    with tempfile.TemporaryDirectory(prefix="battgen-upf-") as tmp:
        for name, *_ in DEBIAN_PBE_PSEUDOS.values():
            shutil.copy(pseudo_dir / name, Path(tmp) / name)
        family = family_class.create_from_folder(
            Path(tmp), label, description="PBE UPFs from Debian quantum-espresso-data (battgen test family)",
            pseudo_type=DataFactory("pseudo.upf"),
        )
    family.set_cutoffs(debian_pseudo_cutoffs(), stringency="normal", unit="Ry")
    return family


def pw_code(computer, label: str = "pw-debian", executable: str = DEFAULT_PW_EXECUTABLE):
    """An InstalledCode for Debian's pw.x on ``computer`` (created once, then reused).

    pw.x writes ``input_tmp.in`` into its working directory; a CalcJob always runs in its own scratch
    folder, so nothing lands in the caller's directory.
    """
    from aiida import orm

    if not Path(executable).is_file():
        raise PseudoSetupError(f"{executable} not found: apt-get install quantum-espresso")
    try:
        return orm.load_code(f"{label}@{computer.label}")
    except Exception:  # noqa: BLE001 - NotExistent: create it
        code = orm.InstalledCode(label=label, computer=computer, filepath_executable=executable,
                                 default_calc_job_plugin="quantumespresso.pw")
        return code.store()
