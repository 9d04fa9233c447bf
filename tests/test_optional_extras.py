"""Optional extras stay optional (issue 17, item 1): ``battgen.discovery`` loads without the ``dft`` extra.

The DFT work chains import aiida-vasp and aiida-quantumespresso; the discovery loads them only where its DFT
stage runs (and validates that they load when the stage is enabled). Each check runs in a fresh interpreter;
"without the extra" is made real there by blocking the import of aiida_vasp (``sys.modules[name] = None``).
The venv without any extra is checked by ``.ci/no-extras.sh`` in CI.
"""

import json
import subprocess
import sys

BLOCK_VASP = "import sys; sys.modules['aiida_vasp'] = None\n"


def _run(code: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_discovery_does_not_import_the_dft_engines():
    out = _run("import json, sys\nfrom aiida.plugins import WorkflowFactory\nWorkflowFactory('battgen.discovery').spec()\n"
               "print(json.dumps({m: m in sys.modules for m in ('aiida_vasp', 'aiida_quantumespresso', 'torch')}))")
    assert out == {"aiida_vasp": False, "aiida_quantumespresso": False, "torch": False}


def test_discovery_without_the_dft_extra_loads_and_says_what_is_missing():
    out = _run(BLOCK_VASP + """
import json
from aiida.plugins import WorkflowFactory
from aiida_battgen.workchains.discovery import load_dft_formation_chain, validate_dft
chain = WorkflowFactory('battgen.discovery')
chain.spec()  # the `dft` namespace exposes battgen.dft.formation_energy's ports: no DFT engine needed for that
off = validate_dft({}, top_k=1)
on = validate_dft({'engine': 'quantumespresso'}, top_k=1)
try:
    load_dft_formation_chain()
    raised = None
except ImportError as exc:
    raised = str(exc)
print(json.dumps({'chain': chain.__name__, 'off': off, 'on': on, 'raised': raised}))
""")
    assert out["chain"] == "DiscoveryWorkChain"
    assert out["off"] is None  # the stage is off: nothing to check, nothing imported
    for message in (out["on"], out["raised"]):
        assert message and "`dft` extra" in message and 'pip install -c constraints.txt -e ".[dft]"' in message


def test_with_the_dft_extra_the_stage_validates():
    out = _run("import json\nfrom aiida_battgen.workchains.discovery import validate_dft\n"
               "print(json.dumps(validate_dft({'engine': 'vasp'}, top_k=1)))")
    assert out is None
