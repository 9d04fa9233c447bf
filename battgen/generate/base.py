"""The generator interface: every structure generator (substitution, CDVAE, an LLM ...) is a
:class:`Generator` registered under the entry-point group ``battgen.generators``.

Rows a generator returns have ``row_id`` ``<short name>-<index:06d>``, and metadata ``generator`` (the
short name), ``parent_row_id`` (the seed row it came from, or None) and generator-specific keys.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from battgen.batch import BatchFormatError, StructureBatch
from battgen.sources.files import read_input_batch

ENTRY_POINT_GROUP = "battgen.generators"
ENTRY_POINT_PREFIX = "battgen."


class UnknownGeneratorError(KeyError):
    """No generator is registered under the requested name."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


class Generator(ABC):
    """Produces candidate structures from seed structures.

    Subclasses set ``name`` (the short name, e.g. ``"substitution"``) and implement :meth:`generate`,
    which must be deterministic for a given ``seed``.
    """

    name: str = ""

    @abstractmethod
    def generate(
        self, seed_structures: StructureBatch, n: int, conditions: dict[str, Any] | None = None, seed: int = 0
    ) -> StructureBatch:
        """Return up to ``n`` new rows; ``conditions`` are generator-specific (invalid ones raise ValueError)."""

    def row_id(self, index: int) -> str:
        return f"{self.name}-{index:06d}"


class TrainableGenerator(Generator):
    """A generator with learned weights (CDVAE, the crystal language model ...).

    Instances are built from a trained model directory (:mod:`battgen.models`):
    ``load_generator("cdvae", model="path/to/model")``. Training goes through :meth:`train`, called by
    ``battgen train-generator`` (:mod:`battgen.generate.training`), which prepares the data split and
    writes the manifest; ``train`` only has to fit and save.
    """

    architecture: str = ""  # the manifest's ``architecture``

    def __init__(self, model: str | Path, device: str = "auto", **options: Any) -> None:
        from battgen.devices import resolve_device  # lazy: resolving imports torch

        self.model_dir = Path(model)
        self.device = resolve_device(device)  # auto | cpu | cuda | cuda:N -> a concrete torch device
        self.options = options

    @classmethod
    @abstractmethod
    def default_hyperparameters(cls) -> dict[str, Any]:
        """Every hyper-parameter with its default (the paper's values where the paper gives one)."""

    @classmethod
    @abstractmethod
    def train(
        cls,
        splits: Any,  # battgen.generate.dataset.DatasetSplits
        model_dir: Path,
        hyperparameters: dict[str, Any],
        seed: int = 0,
        resume_from: Path | None = None,
        device: str = "cpu",
    ) -> dict[str, Any]:
        """Fit on ``splits.train`` (validate on ``splits.val``) on ``device`` (a resolved torch device: every
        tensor is made there), save everything needed to sample into
        ``model_dir`` and checkpoints into ``model_dir / "checkpoints"`` as training goes; with
        ``resume_from`` (an earlier, possibly interrupted, ``model_dir``) continue from its last checkpoint.

        Returns ``{"training": {...}, "metrics": {...}}`` for the manifest (``training`` should hold
        ``steps``, ``epochs``, ``resumed_from_step``, ``stopped_because`` and
        :func:`battgen.devices.training_record`: ``device``, ``device_name``, ``precision``).
        """


def registered_generators() -> dict[str, Any]:
    """Entry-point name -> entry point, for the group ``battgen.generators``."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_generator(name: str, **kwargs: Any) -> Generator:
    """Instantiate a registered generator by entry-point name (``battgen.substitution``) or short name
    (``substitution``); ``kwargs`` go to its constructor."""
    registered = registered_generators()
    full_name = name if name.startswith(ENTRY_POINT_PREFIX) else ENTRY_POINT_PREFIX + name
    if full_name not in registered:
        known = ", ".join(sorted(registered)) or "none"
        raise UnknownGeneratorError(f"no generator {name!r} in entry-point group {ENTRY_POINT_GROUP}; registered: {known}")
    generator_class = registered[full_name].load()
    return generator_class(**kwargs)


# --- battgen generate ---------------------------------------------------------------------------------


def run_generate_command(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """``battgen generate``: config ``generator`` (name), ``input`` (seed batch file; optional for trained
    generators), ``n``, ``conditions``, ``seed``, optional ``options`` (generator constructor kwargs; ``model``
    is a trained model directory relative to the working directory), ``device`` (``auto | cpu | cuda |
    cuda:N``, default auto; trained generators only). Writes ``generated.jsonl.gz``."""
    from battgen.devices import validate_device_setting
    from battgen.errors import InvalidInputError  # the CLI imports this module lazily; avoid a cycle at import

    from battgen.contracts.generate import GenerateSettings

    checked = GenerateSettings.from_config(config)
    n, seed, output = checked.n, checked.seed, checked.output
    try:
        options = dict(config.get("options") or {})
        if "model" in options:  # a trained model directory, relative to the working directory
            options["model"] = workdir / str(options["model"])
        if "device" in config:
            if "device" in options and options["device"] != config["device"]:
                raise InvalidInputError(f"device given twice: `device: {config['device']}` and "
                                        f"`options.device: {options['device']}`")
            options["device"] = validate_device_setting(config["device"])
        generator = load_generator(str(config["generator"]), **options)
        # Trained generators sample without seeds; ``input`` then only feeds conditions such as infilling.
        seeds = read_input_batch(workdir / config["input"]) if "input" in config else StructureBatch()
        generated = generator.generate(seeds, n, dict(config.get("conditions") or {}), seed)
    except (UnknownGeneratorError, BatchFormatError, ValueError, TypeError, OSError) as exc:
        raise InvalidInputError(str(exc)) from exc
    generated.write(workdir / output)
    run_stats = getattr(generator, "last_run_stats", None)  # e.g. the language model's parse failures
    return {
        **({"run_stats": json.loads(json.dumps(run_stats, default=float))} if run_stats else {}),
        "generated": output,
        "generator": generator.name,
        "n_seeds": len(seeds),
        "n_requested": n,
        "n_generated": len(generated),
        "seed": seed,
    }
