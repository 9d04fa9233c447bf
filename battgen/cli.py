"""The ``battgen`` command line: ``battgen <command> --config config.yaml [--workdir DIR]``.

Every command reads a YAML config, does its work in the working directory and writes
``battgen-summary.yaml`` there: the command, its config, the outputs it wrote, units, package versions
and a status. CalcJobs of the AiiDA layer run exactly these commands and parse exactly these files.

Exit codes: 0 success; 2 invalid config or input (nothing written but the summary); 3 the run failed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import platform
import sys
import time
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from battgen import __version__

SUMMARY_FILENAME = "battgen-summary.yaml"
SUMMARY_FORMAT_VERSION = 1

EXIT_OK = 0
EXIT_INVALID_INPUT = 2
EXIT_FAILED = 3

# command name -> "module:function"; each function takes (config: dict, workdir: Path) and returns a
# dict of outputs (file names relative to workdir, counts, units) that goes into the summary.
COMMANDS: dict[str, str] = {
    "relax": "battgen.mlip.relax:run_relax_command",
    "screen": "battgen.screen.pipeline:run_screen_command",
    "generate": "battgen.generate.base:run_generate_command",
    "train-generator": "battgen.generate.training:run_train_generator_command",
    "evaluate": "battgen.evaluate.metrics:run_evaluate_command",
    "train-predictor": "battgen.predictors.training:run_train_predictor_command",
    "predict": "battgen.predictors.training:run_predict_command",
    "train-potential": "battgen.mlip.nequip_training:run_train_potential_command",
    "md": "battgen.md.run:run_md_command",
    "diffusion": "battgen.md.analysis:run_diffusion_command",
    "query-mp": "battgen.sources.materials_project:run_query_command",
    "hull": "battgen.stability.hull:run_hull_command",
    "channels": "battgen.channels.analysis:run_channels_command",
    "insertion": "battgen.insertion.potential:run_insertion_command",
    "si-anode": "battgen.anode.silicon:run_si_anode_command",
}

# Packages whose versions go into every summary (those not installed are skipped).
_VERSIONED_PACKAGES = ("pymatgen", "ase", "numpy", "smact", "torch", "chgnet", "sevenn", "matgl", "mp-api",
                       "transformers", "peft", "torch-geometric", "nequip", "alignn", "pymatgen-analysis-diffusion", "kinisi")


# Config keys whose values never go into a summary file (secrets belong in the environment).
_SECRET_KEY_PARTS = ("api_key", "apikey", "password", "token", "secret")


def redact_secrets(value: Any) -> Any:
    """A copy of ``value`` with every secret-looking key's value replaced by ``"<redacted>"``."""
    if isinstance(value, dict):
        return {
            k: "<redacted>" if any(part in str(k).lower() for part in _SECRET_KEY_PARTS) else redact_secrets(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_secrets(v) for v in value]
    return value


class InvalidInputError(ValueError):
    """Raised by a command when its config or input data is unusable; maps to exit code 2."""


def package_versions() -> dict[str, str]:
    versions = {"battgen": __version__, "python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def load_command(name: str) -> Callable[[dict[str, Any], Path], dict[str, Any]]:
    module_name, func_name = COMMANDS[name].split(":")
    return getattr(importlib.import_module(module_name), func_name)


def write_summary(workdir: Path, summary: dict[str, Any]) -> Path:
    path = workdir / SUMMARY_FILENAME
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(summary, handle, sort_keys=False)
    return path


def run_command(name: str, config: dict[str, Any], workdir: Path) -> tuple[int, dict[str, Any]]:
    """Run one command in ``workdir`` and write its summary; returns (exit code, summary)."""
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    summary: dict[str, Any] = {
        "summary_format_version": SUMMARY_FORMAT_VERSION,
        "command": name,
        "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "config": redact_secrets(config),
        "versions": package_versions(),
    }
    try:
        outputs = load_command(name)(config, workdir)
        summary.update(status="ok", exit_code=EXIT_OK, outputs=outputs)
    except InvalidInputError as exc:
        summary.update(status="invalid_input", exit_code=EXIT_INVALID_INPUT, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - any failure must still leave a summary behind
        summary.update(
            status="failed", exit_code=EXIT_FAILED, error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(limit=8),
        )
    summary["wall_time_s"] = round(time.perf_counter() - started, 3)
    write_summary(workdir, summary)
    return summary["exit_code"], summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="battgen", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"battgen {__version__}")
    parser.add_argument("command", choices=sorted(COMMANDS), help="what to run")
    parser.add_argument("--config", required=True, type=Path, help="YAML file with the command's settings")
    parser.add_argument("--workdir", type=Path, default=Path("."), help="where inputs are read and outputs go")
    args = parser.parse_args(argv)

    try:
        config = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        print(f"battgen: cannot read config {args.config}: {exc}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    if not isinstance(config, dict):
        print(f"battgen: config {args.config} must be a mapping, got {type(config).__name__}", file=sys.stderr)
        return EXIT_INVALID_INPUT

    code, summary = run_command(args.command, config, args.workdir)
    if code != EXIT_OK:
        print(f"battgen {args.command}: {summary['status']}: {summary.get('error')}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
