"""Base parser for ``battgen <command>`` runs: reads the summary YAML and batch files from the retrieved
folder only (never the remote work directory) and maps CLI failures to the CalcJob's 3xx exit codes."""

from __future__ import annotations

import gzip
import io
import json
from typing import Any

import yaml
from aiida import orm
from aiida.engine import ExitCode
from aiida.parsers import Parser

from battgen.batch import BatchFormatError, StructureBatch
from battgen.cli import EXIT_FAILED, EXIT_INVALID_INPUT, SUMMARY_FILENAME


# "can't allocate memory" / "Cannot allocate memory" (errno 12): torch's CPU allocator and mmap under a
# memory limit (ulimit -v, a cgroup); "failed to map segment": a shared library that no longer fits.
OUT_OF_MEMORY_MARKERS = ("out of memory", "MemoryError", "CUBLAS_STATUS_ALLOC_FAILED", "can't allocate memory",
                         "Cannot allocate memory", "failed to map segment")
# AiiDA's scheduler exit codes (ERROR_SCHEDULER_OUT_OF_MEMORY 110, ..._OUT_OF_WALLTIME 120, ..._NODE_FAILURE 140 ...)
SCHEDULER_EXIT_STATUSES = range(100, 200)


class ParsingError(Exception):
    """Carries the exit code a parsing step ended with (raised and caught inside ``parse``)."""

    def __init__(self, exit_code: ExitCode) -> None:
        super().__init__(exit_code.message)
        self.exit_code = exit_code


class BattgenParser(Parser):
    """Shared steps; subclasses implement :meth:`parse_outputs` using the helpers below."""

    def parse(self, **kwargs: Any) -> ExitCode | None:
        self.parse_kwargs = kwargs  # e.g. retrieved_temporary_folder
        self.report_final_progress()
        try:
            summary = self.read_summary()
            return self.parse_outputs(summary)
        except ParsingError as exc:
            return exc.exit_code

    def parse_outputs(self, summary: dict[str, Any]) -> ExitCode | None:
        raise NotImplementedError

    def report_final_progress(self) -> None:
        """The progress monitor cannot look once the job has left the scheduler: report its last state here."""
        if self.node.base.links.get_incoming(link_label_filter="monitors__progress").first() is None:
            return
        from aiida_battgen.calculations.monitors import report_progress
        from aiida_battgen.tools.progress import read_retrieved_progress

        state = read_retrieved_progress(self.node)
        if state is not None:
            report_progress(self.node, state)

    # --- helpers --------------------------------------------------------------------------------
    def _stderr_tail(self, n_lines: int = 5) -> str:
        name = self.node.get_option("error_filename") if "error_filename" in self.node.get_options() else None
        if not name or name not in self.retrieved.base.repository.list_object_names():
            return ""
        lines = self.retrieved.base.repository.get_object_content(name, mode="r").strip().splitlines()
        return "\n".join(lines[-n_lines:])

    def read_summary(self) -> dict[str, Any]:
        """The CLI summary; raises ParsingError with 302 (missing/garbled), 303 (invalid input) or 304 (failed)."""
        try:
            summary = yaml.safe_load(self.retrieved.base.repository.get_object_content(SUMMARY_FILENAME, mode="r"))
        except (FileNotFoundError, OSError, yaml.YAMLError):
            tail = self._stderr_tail()
            if tail:
                self.logger.error(f"stderr of the battgen CLI ends with:\n{tail}")
            scheduler_exit_code = self._scheduler_exit_code()
            if scheduler_exit_code is not None:
                # Killed by the scheduler (walltime, node failure ...): its diagnosis is the useful one, and
                # the restart wrappers act on it (continue from chunks / checkpoints, more walltime).
                self.logger.error(f"no summary: the scheduler reported {scheduler_exit_code.message}")
                raise ParsingError(scheduler_exit_code)
            if not self.retrieved.base.repository.list_object_names():
                self.logger.error("nothing was retrieved: the remote working directory was missing or emptied "
                                  "before retrieval")
            raise ParsingError(self.exit_codes.ERROR_SUMMARY_MISSING)
        if not isinstance(summary, dict) or "exit_code" not in summary:
            raise ParsingError(self.exit_codes.ERROR_SUMMARY_MISSING)
        if summary["exit_code"] == EXIT_INVALID_INPUT:
            raise ParsingError(self.exit_codes.ERROR_CLI_INVALID_INPUT.format(error=summary.get("error")))
        if summary["exit_code"] == EXIT_FAILED or summary["exit_code"] != 0:
            specific = self.classify_failure(summary)
            if specific is not None:
                raise ParsingError(specific)
            if summary.get("traceback"):
                self.logger.error(f"battgen traceback:\n{summary['traceback']}")
            raise ParsingError(self.exit_codes.ERROR_CLI_FAILED.format(error=summary.get("error")))
        return summary

    def _scheduler_exit_code(self) -> ExitCode | None:
        """The exit code the scheduler output parser already set on the node (before this parser ran), if any."""
        status = self.node.exit_status
        if status is None or status not in SCHEDULER_EXIT_STATUSES:
            return None
        for exit_code in self.exit_codes.values():
            if exit_code.status == status:
                return exit_code
        return None

    def classify_failure(self, summary: dict[str, Any]) -> ExitCode | None:
        """A more specific exit code than 304 for a failed run: out of memory (for CalcJobs that define
        ``ERROR_OUT_OF_MEMORY``, so their restart wrapper can shrink the batch); None keeps 304."""
        error = str(summary.get("error") or "")
        if "ERROR_OUT_OF_MEMORY" in self.exit_codes and any(marker in error for marker in OUT_OF_MEMORY_MARKERS):
            return self.exit_codes.ERROR_OUT_OF_MEMORY.format(error=error[:200])
        return None

    def _require(self, filename: str) -> None:
        if filename not in self.retrieved.base.repository.list_object_names():
            raise ParsingError(self.exit_codes.ERROR_MISSING_OUTPUT_FILES.format(files=filename))

    def read_batch(self, filename: str) -> StructureBatch:
        """A retrieved batch file; raises ParsingError with 300 (missing) or 301 (unreadable/truncated)."""
        self._require(filename)
        try:
            with self.retrieved.base.repository.open(filename, mode="rb") as handle:
                with gzip.open(handle, "rt", encoding="utf-8") as text:
                    return StructureBatch.read_stream(text, source=filename)
        except (BatchFormatError, OSError, EOFError, UnicodeDecodeError) as exc:
            raise ParsingError(self.exit_codes.ERROR_OUTPUT_UNREADABLE.format(error=f"{filename}: {exc}"))

    def read_singlefile(self, filename: str):
        """A retrieved file (a table, a figure) as a new SinglefileData; raises ParsingError with 300 if missing."""
        self._require(filename)
        with self.retrieved.base.repository.open(filename, mode="rb") as handle:
            return orm.SinglefileData(io.BytesIO(handle.read()), filename=filename)

    def read_json(self, filename: str) -> Any:
        """A retrieved JSON file; raises ParsingError with 300 (missing) or 301 (not JSON)."""
        self._require(filename)
        try:
            return json.loads(self.retrieved.base.repository.get_object_content(filename, mode="r"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ParsingError(self.exit_codes.ERROR_OUTPUT_UNREADABLE.format(error=f"{filename}: {exc}"))
