"""CalcJobs that train a model and store it as a ``battgen.model`` node:

* ``battgen.generator.train`` runs ``battgen train-generator`` (CDVAE, the crystal language model);
* ``battgen.predictor.train`` runs ``battgen train-predictor`` (ALIGNN, matgl, descriptor CNNs, voltage CGCNN).

The training batch, split seed and hyper-parameters are inputs; the model directory comes back through a
temporary retrieval (weights can be large; checkpoints are not stored). Resuming after a kill takes the
killed run's ``remote_folder`` as ``parent_folder``: its checkpoints are copied on the remote computer into
the new working directory.
"""

from __future__ import annotations

from typing import Any, ClassVar

from aiida import orm

from aiida_battgen.calculations.base import BattgenCalcJob
from aiida_battgen.data.batch import StructureBatchData
from aiida_battgen.data.model import ModelData
from battgen.contracts.base import MODEL_DIRNAME, CommandSettings
from battgen.models import CHECKPOINT_DIRNAME  # yaml and hashlib only: no torch

from battgen.contracts.training import (INTERRUPTED_REASONS, RESUME_DIRNAME, TRAINING_FILENAME,  # noqa: F401
                                       TrainGeneratorSettings, TrainPotentialSettings, TrainPredictorSettings)


def validate_training_structures(structures: StructureBatchData, _=None) -> str | None:
    if structures.n_rows == 0:
        return "the training batch is empty"
    return None


class ModelTrainCalculation(BattgenCalcJob):
    """Shared ports, files and exit codes of the training CalcJobs; subclasses set COMMAND and the schema."""

    SETTINGS: ClassVar[type[CommandSettings]] = CommandSettings
    # What build_config writes itself (the job's own files), for the submit-time check of the settings model.
    JOB_VALUES: ClassVar[dict[str, Any]] = {"train": TRAINING_FILENAME}
    PARSER_NAME: ClassVar[str] = ""

    @classmethod
    def validate_parameters(cls, parameters: orm.Dict, _=None) -> str | None:
        """The command's settings model (battgen.contracts.training) at submit time."""
        return cls.SETTINGS.parameters_error(parameters.get_dict(), job_values=cls.JOB_VALUES)

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.inputs["metadata"]["options"]["parser_name"].default = cls.PARSER_NAME
        spec.input("training_structures", valid_type=StructureBatchData, validator=validate_training_structures,
                   help="The structures to train on (filtered and split by the run; the split is saved in the model).")
        spec.input("parameters", valid_type=orm.Dict, validator=cls.validate_parameters,
                   help=f"`battgen {cls.COMMAND}` settings: " + cls.SETTINGS.help())
        spec.input("parent_folder", valid_type=orm.RemoteData, required=False,
                   help="Working directory of an interrupted training run: continue from its last checkpoint.")
        spec.output("model", valid_type=ModelData, help="The trained model (weights, manifest, split.json).")
        spec.output("output_parameters", valid_type=orm.Dict,
                    help="Training record (steps, epochs, stop reason, split sizes, data sha256) and held-out "
                         "metrics (units in the key names); wall time in s.")
        spec.default_output_node = "output_parameters"
        spec.exit_code(310, "ERROR_MODEL_INVALID", message="The trained model directory is missing or corrupt: {error}")
        spec.exit_code(410, "WARNING_TRAINING_INTERRUPTED",
                       message="Training stopped early ({reason}) after writing a checkpoint; a restart resumes it.")

    def build_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"train": TRAINING_FILENAME, "output": MODEL_DIRNAME}
        config.update(self.inputs.parameters.get_dict())
        if "parent_folder" in self.inputs:
            config["resume_from"] = RESUME_DIRNAME
        return config

    def input_files(self) -> list[tuple[str, str, str]]:
        structures = self.inputs.training_structures
        return [(structures.uuid, structures.FILENAME, TRAINING_FILENAME)]

    def prepare_for_submission(self, folder):
        calcinfo = super().prepare_for_submission(folder)
        calcinfo.retrieve_temporary_list = [MODEL_DIRNAME]
        if "parent_folder" in self.inputs:
            parent = self.inputs.parent_folder
            folder.get_subfolder(RESUME_DIRNAME, create=True)
            calcinfo.remote_copy_list = [(
                parent.computer.uuid, f"{parent.get_remote_path()}/{MODEL_DIRNAME}/{CHECKPOINT_DIRNAME}",
                f"{RESUME_DIRNAME}/{CHECKPOINT_DIRNAME}",
            )]
        return calcinfo


class GeneratorTrainCalculation(ModelTrainCalculation):
    """Train a generator on a structure batch (``battgen train-generator``)."""

    COMMAND = "train-generator"
    PARSER_NAME = "battgen.generator.train"
    SETTINGS = TrainGeneratorSettings


class PredictorTrainCalculation(ModelTrainCalculation):
    """Train a property predictor on a labelled structure batch (``battgen train-predictor``)."""

    COMMAND = "train-predictor"
    PARSER_NAME = "battgen.predictor.train"
    SETTINGS = TrainPredictorSettings


class PotentialTrainCalculation(ModelTrainCalculation):
    """Train an interatomic potential (NequIP, seed 002) on DFT frames (``battgen train-potential``); the
    compiled model becomes a ``battgen.model`` of kind ``potential`` that ``battgen.mlip.md`` can drive."""

    COMMAND = "train-potential"
    PARSER_NAME = "battgen.mlip.train"
    FRAMES_DIRNAME = "frames"
    SETTINGS = TrainPotentialSettings
    JOB_VALUES = {"frames": [FRAMES_DIRNAME]}

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.inputs.pop("training_structures")
        spec.input_namespace("frames", valid_type=(orm.SinglefileData, orm.FolderData), dynamic=True,
                             help="Training frames: vasprun.xml(.gz), extxyz, mlearn JSON, MP trajectory JSON files "
                                  "or folders (li_al_mlip layout); energies in eV, forces in eV/Å.")
        spec.input("initial_model", valid_type=ModelData, required=False,
                   help="A potential to fine-tune (its weights initialise the training).")
        spec.inputs["frames"].validator = lambda frames, _: None if frames else "give at least one `frames` input"

    def build_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"output": MODEL_DIRNAME, "frames": sorted(self._frame_targets().values())}
        config.update(self.inputs.parameters.get_dict())
        if "initial_model" in self.inputs:
            config["initial_model"] = "initial_model"
        if "parent_folder" in self.inputs:
            config["resume_from"] = RESUME_DIRNAME
        return config

    def _frame_targets(self) -> dict[str, str]:
        targets = {}
        for label, node in self.inputs.frames.items():
            name = node.filename if isinstance(node, orm.SinglefileData) else label
            targets[label] = f"{self.FRAMES_DIRNAME}/{label}_{name}" if isinstance(node, orm.SinglefileData) \
                else f"{self.FRAMES_DIRNAME}/{name}"
        return targets

    def input_files(self) -> list[tuple[str, str, str]]:
        files = []
        targets = self._frame_targets()
        for label, node in self.inputs.frames.items():
            source = node.filename if isinstance(node, orm.SinglefileData) else ""
            files.append((node.uuid, source, targets[label]))
        if "initial_model" in self.inputs:
            files.append((self.inputs.initial_model.uuid, "", "initial_model"))
        return files

    def prepare_for_submission(self, folder):
        folder.get_subfolder(self.FRAMES_DIRNAME, create=True)
        return super().prepare_for_submission(folder)
