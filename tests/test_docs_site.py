"""The documentation site (issue 17, item 10): built by ``.ci/docs.sh`` (Sphinx + MyST, ``-W``); here the parts
of it that can drift cheaply: every process / data entry point has its API entry, and every port help of ours
is valid reStructuredText (aiida.sphinxext renders them; their docutils messages do not fail ``-W``)."""

from __future__ import annotations

import io
import re
from importlib.metadata import distribution
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api"
OURS = ("aiida_battgen", "battgen")


def _entry_points(group: str):
    return [ep for ep in distribution("aiida-battgen").entry_points if ep.group == group]


@pytest.mark.parametrize("group, page", [("aiida.workflows", "workchains.md"), ("aiida.calculations", "calculations.md"),
                                         ("aiida.data", "data.md")])
def test_every_entry_point_has_an_api_entry(group, page):
    text = (API / page).read_text()
    missing = [ep.name for ep in _entry_points(group) if f"## `{ep.name}`" not in text]
    assert not missing, f"docs/api/{page} lacks {missing}"
    for ep in _entry_points(group):
        module, name = ep.value.split(":")
        assert re.search(rf"{re.escape(module)}(\.{name}|\n)", text) or f":module: {module}" in text, ep


def _helps(namespace, prefix, skip):
    for name, port in namespace.items():
        path = f"{prefix}{name}"
        if path in skip:
            continue
        if getattr(port, "help", None):
            yield path, port.help
        if hasattr(port, "ports") or type(port).__name__.endswith("Namespace"):
            yield from _helps(port, f"{path}.", skip)


def _exposed_from_others(spec) -> set[str]:
    """Ports a spec exposes from another plugin's process (their help is not ours to fix)."""
    skip = set()
    for namespace, processes in getattr(spec, "_exposed_inputs", {}).items():
        for process, names in processes.items():
            if not process.__module__.startswith(OURS):
                skip.update(f"{namespace}.{name}" if namespace else name for name in names)
    return skip


def test_port_help_texts_are_valid_restructuredtext():
    publish_doctree = pytest.importorskip("docutils.core", reason="the `docs` extra (docutils) is not installed; .ci/docs.sh installs it and runs this file").publish_doctree

    problems = []
    for group in ("aiida.workflows", "aiida.calculations"):
        for ep in _entry_points(group):
            try:
                process = ep.load()
                spec = process.spec()
            except Exception as exc:  # noqa: BLE001 - an entry point that needs a missing extra
                pytest.skip(f"{ep.name} does not load here: {exc}")
            skip = _exposed_from_others(spec)
            for kind, namespace in (("input", spec.inputs), ("output", spec.outputs)):
                for path, text in _helps(namespace, "", skip):
                    stream = io.StringIO()
                    publish_doctree(text, settings_overrides={"warning_stream": stream, "report_level": 2})
                    if stream.getvalue():
                        problems.append(f"{ep.name} {kind} {path}: {stream.getvalue().strip().splitlines()[0]}")
    assert not problems, "\n".join(problems)


def test_the_rst_check_can_fail():
    publish_doctree = pytest.importorskip("docutils.core", reason="the `docs` extra (docutils) is not installed; .ci/docs.sh installs it and runs this file").publish_doctree

    stream = io.StringIO()
    publish_doctree("Compounds by |slope| ascending.", settings_overrides={"warning_stream": stream, "report_level": 2})
    assert "Undefined substitution" in stream.getvalue()
