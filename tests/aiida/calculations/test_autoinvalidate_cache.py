"""The cache contract of every ``battgen.*`` CalcJob (aiida-quantumespresso's test_autoinvalidate_cache): an exit
code below 400 means the run left nothing usable and must never be reused from the cache; 4xx codes are
recoverable (partial outputs kept) and keep the node a valid cache source. BattgenCalcJobProcessSpec sets this;
the test fails when a CalcJob bypasses it or sets another value by hand."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
from aiida.engine import CalcJob
from aiida.plugins import CalculationFactory

from aiida_battgen.calculations.base import BattgenCalcJobProcessSpec


def _battgen_calcjobs() -> list[str]:
    names = []
    for entry_point in entry_points(group="aiida.calculations"):
        if entry_point.name.startswith("battgen."):
            process = entry_point.load()
            if isinstance(process, type) and issubclass(process, CalcJob):
                names.append(entry_point.name)
    return sorted(names)


CALCJOBS = _battgen_calcjobs()


def test_every_calcjob_is_found():
    assert {"battgen.mlip.relax", "battgen.mlip.md", "battgen.generate", "battgen.predict", "battgen.insertion",
            "battgen.si_anode", "battgen.channels", "battgen.mlip.train"} <= set(CALCJOBS)


@pytest.mark.parametrize("entry_point", CALCJOBS)
def test_exit_codes_below_400_invalidate_the_cache(entry_point):
    process = CalculationFactory(entry_point)
    assert process._spec_class is BattgenCalcJobProcessSpec or issubclass(process._spec_class, BattgenCalcJobProcessSpec)
    for label, code in process.spec().exit_codes.items():
        assert code.invalidates_cache == (code.status < 400), (entry_point, label, code.status)


@pytest.mark.parametrize("entry_point", CALCJOBS)
def test_a_failed_node_is_no_cache_source(entry_point, generate_calc_job_node):
    """On nodes: the lowest 3xx code makes the node an invalid cache source, a 4xx one (where the CalcJob has one)
    keeps it valid, like a success."""
    codes = sorted(CalculationFactory(entry_point).spec().exit_codes.values(), key=lambda code: code.status)
    broken = next(code for code in codes if 300 <= code.status < 400)
    assert not generate_calc_job_node(entry_point, broken).base.caching.is_valid_cache
    assert generate_calc_job_node(entry_point).base.caching.is_valid_cache
    recoverable = [code for code in codes if 400 <= code.status < 500]
    if recoverable:
        assert generate_calc_job_node(entry_point, recoverable[0]).base.caching.is_valid_cache
