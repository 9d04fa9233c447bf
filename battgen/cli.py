"""The ``battgen`` command line: ``battgen <command> --config config.yaml [--workdir DIR]``.

Every command reads a YAML config, does its work in the working directory and writes
``battgen-summary.yaml`` there: the command, its config, the outputs it wrote, units, package versions
and a status. CalcJobs of the AiiDA layer run exactly these commands and parse exactly these files.

Exit codes: 0 success; 2 invalid config or input (nothing written but the summary); 3 the run failed.

While a command runs it also keeps ``battgen-progress.json`` current (rows done / total, current row, ETA;
see :mod:`battgen.progress`). ``--threads N`` sets OpenMP / MKL / OpenBLAS and torch to N threads (the
AiiDA CalcJobs pass the job's cpus); the threads in effect are recorded in the summary.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import importlib.util
import os
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
from battgen.errors import InvalidInputError  # noqa: F401 - re-exported for the commands
from battgen.known_warnings import ignore_known_warnings
from battgen.progress import PROGRESS_FILENAME, progress_file  # noqa: F401 - PROGRESS_FILENAME re-exported

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
    "hull": "battgen.stability.command:run_hull_command",
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


# Environment variables read by the OpenMP / BLAS runtimes when they start (before torch or numpy load).
THREAD_ENVIRONMENT_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def set_threads(threads: int) -> dict[str, Any]:
    """Limit this process to ``threads`` compute threads (OpenMP / MKL / OpenBLAS and torch's intra-op pool)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    for variable in THREAD_ENVIRONMENT_VARIABLES:
        os.environ[variable] = str(threads)
    if "torch" in sys.modules or importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(threads)
    return {"requested": threads}


def threads_in_effect(requested: int | None) -> dict[str, Any]:
    """What the summary records: the request, the environment and torch's pool (when torch was loaded)."""
    record: dict[str, Any] = {"requested": requested}
    record.update({variable: os.environ.get(variable) for variable in THREAD_ENVIRONMENT_VARIABLES})
    torch = sys.modules.get("torch")
    if torch is not None:
        record["torch_num_threads"] = int(torch.get_num_threads())
    record["cpus_visible"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return record


def run_command(name: str, config: dict[str, Any], workdir: Path,
                threads: int | None = None) -> tuple[int, dict[str, Any]]:
    """Run one command in ``workdir`` and write its summary; returns (exit code, summary).

    ``threads`` (optional) limits the compute threads of this process before the command is loaded.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    summary: dict[str, Any] = {
        "summary_format_version": SUMMARY_FORMAT_VERSION,
        "command": name,
        "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "config": redact_secrets(config),
        "versions": package_versions(),
    }
    with progress_file(workdir, name) as progress:
        try:
            if threads is not None:  # inside: importing torch can itself fail (out of memory) and needs a summary
                set_threads(threads)
            outputs = load_command(name)(config, workdir)
            summary.update(status="ok", exit_code=EXIT_OK, outputs=outputs)
        except InvalidInputError as exc:
            summary.update(status="invalid_input", exit_code=EXIT_INVALID_INPUT, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - any failure must still leave a summary behind
            summary.update(
                status="failed", exit_code=EXIT_FAILED, error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(limit=8),
            )
        if summary["status"] == "invalid_input":
            progress.discard()  # rejected input leaves nothing but the summary
        else:
            progress.finish("finished" if summary["status"] == "ok" else "failed")
    summary["threads"] = threads_in_effect(threads)
    summary["wall_time_s"] = round(time.perf_counter() - started, 3)
    write_summary(workdir, summary)
    return summary["exit_code"], summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="battgen", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"battgen {__version__}")
    parser.add_argument("command", choices=sorted(COMMANDS), help="what to run")
    parser.add_argument("--config", required=True, type=Path, help="YAML file with the command's settings")
    parser.add_argument("--workdir", type=Path, default=Path("."), help="where inputs are read and outputs go")
    parser.add_argument("--threads", type=int, default=None,
                        help="compute threads (OpenMP, MKL, torch); default: the libraries' own choice")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        print(f"battgen: --threads must be a positive integer, got {args.threads}", file=sys.stderr)
        return EXIT_INVALID_INPUT

    try:
        config = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        print(f"battgen: cannot read config {args.config}: {exc}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    if not isinstance(config, dict):
        print(f"battgen: config {args.config} must be a mapping, got {type(config).__name__}", file=sys.stderr)
        return EXIT_INVALID_INPUT

    ignore_known_warnings()
    code, summary = run_command(args.command, config, args.workdir, threads=args.threads)
    if code != EXIT_OK:
        print(f"battgen {args.command}: {summary['status']}: {summary.get('error')}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
