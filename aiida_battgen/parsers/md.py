"""Parser of ``battgen.mlip.md``: MD summary, down-sampled trajectory, MSD and (with analysis) D and σ."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import yaml
from aiida import orm
from aiida.engine import ExitCode

from aiida_battgen.calculations.md import ANALYSIS_DIRNAME
from aiida_battgen.parsers.base import BattgenParser, ParsingError
from battgen.cli import SUMMARY_FILENAME
from battgen.contracts.md import DOWNSAMPLED_FILENAME, MSD_FIGURE_FILENAME, MSD_FILENAME, MdStatus
from battgen.contracts.md import RESULTS_FILENAME as DIFFUSION_RESULTS_FILENAME
from battgen.contracts.md import SUMMARY_FILENAME as MD_SUMMARY_FILENAME


class MdParser(BattgenParser):
    def _names(self) -> set[str]:
        names = set(self.retrieved.base.repository.list_object_names())
        if ANALYSIS_DIRNAME in names:
            names |= {f"{ANALYSIS_DIRNAME}/{n}" for n in self.retrieved.base.repository.list_object_names(ANALYSIS_DIRNAME)}
        return names

    def _trajectory(self) -> orm.TrajectoryData | None:
        from ase.io import read

        text = self.retrieved.base.repository.get_object_content(DOWNSAMPLED_FILENAME, mode="r")
        frames = read(io.StringIO(text), index=":", format="extxyz")
        if not frames:
            return None
        trajectory = orm.TrajectoryData()
        trajectory.set_trajectory(
            symbols=frames[0].get_chemical_symbols(),
            positions=np.array([f.get_positions() for f in frames]),
            cells=np.array([f.get_cell().array for f in frames]),
        )
        return trajectory

    def _msd(self) -> orm.ArrayData:
        with self.retrieved.base.repository.open(MSD_FILENAME, mode="rb") as handle:
            data = np.load(io.BytesIO(handle.read()))
            arrays = orm.ArrayData()
            for key in data.files:
                arrays.set_array(key, data[key])
        return arrays

    def _analysis(self, names: set[str]) -> dict[str, Any] | None:
        summary_name = f"{ANALYSIS_DIRNAME}/{SUMMARY_FILENAME}"
        if summary_name not in names:
            return None
        summary = yaml.safe_load(self.retrieved.base.repository.get_object_content(summary_name, mode="r"))
        if summary.get("exit_code") != 0:
            raise ParsingError(self.exit_codes.ERROR_ANALYSIS_FAILED.format(error=summary.get("error")))
        results = json.loads(self.retrieved.base.repository.get_object_content(
            f"{ANALYSIS_DIRNAME}/{DIFFUSION_RESULTS_FILENAME}", mode="r"))
        return results["runs"][0] if results.get("runs") else None

    def parse_outputs(self, summary: dict[str, Any]) -> ExitCode | None:
        names = self._names()
        if MD_SUMMARY_FILENAME not in names:
            raise ParsingError(self.exit_codes.ERROR_MISSING_OUTPUT_FILES.format(files=MD_SUMMARY_FILENAME))
        md_summary = json.loads(self.retrieved.base.repository.get_object_content(MD_SUMMARY_FILENAME, mode="r"))
        status = md_summary.get("status")
        parameters: dict[str, Any] = {"md": md_summary, "status": status, "versions": summary.get("versions", {})}
        if DOWNSAMPLED_FILENAME in names:
            trajectory = self._trajectory()
            if trajectory is not None:
                self.out("trajectory", trajectory)
        if status == MdStatus.COMPLETED:
            if MSD_FILENAME in names:
                self.out("msd", self._msd())
            analysis = self._analysis(names)
            if analysis is not None:
                parameters["diffusion"] = analysis
                for key in ("diffusivity_cm2_per_s", "conductivity_mS_per_cm", "temperature_K"):
                    if key in analysis:
                        parameters[key] = analysis[key]
                figure = f"{ANALYSIS_DIRNAME}/{MSD_FIGURE_FILENAME}"
                if figure in names:
                    with self.retrieved.base.repository.open(figure, mode="rb") as handle:
                        self.out("msd_figure", orm.SinglefileData(io.BytesIO(handle.read()), filename=MSD_FIGURE_FILENAME))
        self.out("output_parameters", orm.Dict(json.loads(json.dumps(parameters, default=float))))
        if status == MdStatus.UNSTABLE:
            return self.exit_codes.ERROR_MD_UNSTABLE.format(step=md_summary.get("unstable_at_step"),
                                                            reason=md_summary.get("unstable_reason"))
        if status == MdStatus.INCOMPLETE:
            return self.exit_codes.WARNING_MD_INCOMPLETE.format(steps=md_summary.get("steps_done"))
        return None
