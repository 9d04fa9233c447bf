"""Contracts: every entry point loads, the science layer imports no AiiDA, the AiiDA layer no torch."""

import subprocess
import sys
from importlib.metadata import entry_points

import pytest

GROUPS = (
    "battgen.generators", "battgen.mlips", "aiida.data", "aiida.calculations", "aiida.parsers",
    "aiida.workflows", "aiida.cmdline.data",
)


def _ours(group):
    return [ep for ep in entry_points(group=group) if ep.value.startswith(("battgen", "aiida_battgen"))]


@pytest.mark.parametrize("group", GROUPS)
def test_every_entry_point_loads(group):
    eps = _ours(group)
    assert eps, f"no aiida-battgen entry points in group {group}"
    for ep in eps:
        assert ep.name.startswith("battgen"), f"{group}:{ep.name} is not named battgen.*"
        assert ep.load() is not None


def _modules_after_import(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


def test_science_layer_imports_no_aiida():
    modules = _modules_after_import(
        "import battgen, battgen.batch, battgen.cli, battgen.select, battgen.report, battgen.screen.pipeline, "
        "battgen.generate.substitution, battgen.sources.files, battgen.sources.builtin_hosts, "
        "battgen.sources.materials_project, battgen.stability.hull, battgen.mlip.relax, battgen.models, "
        "battgen.generate.training, battgen.generate.cdvae, battgen.generate.llm, battgen.evaluate.metrics, "
        "battgen.predictors.training, battgen.predictors.voltage_cgcnn, battgen.predictors.descriptor_cnn, "
        "battgen.electrochem.capacity, battgen.stability.predicted, battgen.electrochem.voltage, battgen.dft.formation, "
        "battgen.channels.analysis, battgen.insertion.potential, battgen.anode.silicon"
    )
    assert not [m for m in modules if m == "aiida" or m.startswith("aiida.")]


def test_aiida_layer_imports_no_torch():
    modules = _modules_after_import(
        "import aiida_battgen.workchains.discovery, aiida_battgen.calculations.relax, aiida_battgen.parsers.relax, "
        "aiida_battgen.cli, aiida_battgen.tools.lineage, aiida_battgen.tools.demo, aiida_battgen.workchains.training, "
        "aiida_battgen.workchains.generator, aiida_battgen.workchains.predict, aiida_battgen.workchains.property_screen, "
        "aiida_battgen.parsers.training, aiida_battgen.parsers.generator, aiida_battgen.parsers.predict, "
        "aiida_battgen.calculations.functions.predict_properties, aiida_battgen.calculations.functions.capacity, "
        "aiida_battgen.calculations.functions.predicted_energy_above_hull, aiida_battgen.workchains.dft, "
        "aiida_battgen.workchains.dft_formation, aiida_battgen.workchains.si_anode, aiida_battgen.workchains.insertion, "
        "aiida_battgen.calculations.channels, aiida_battgen.calculations.functions.electrode_voltage"
    )
    assert "torch" not in modules


def test_calcfunctions_live_one_per_file():
    from pathlib import Path

    import aiida_battgen.calculations.functions as functions

    folder = Path(functions.__file__).parent
    for path in folder.glob("[!_]*.py"):
        text = path.read_text()
        assert text.count("@calcfunction") == 1, f"{path.name} must define exactly one calcfunction"
