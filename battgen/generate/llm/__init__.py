"""The crystal language model (seed 000 §2.3: LLaMA-3.1-8B + LoRA on crystal text, after crystal-text-llm).

``CrystalLLMGenerator`` (entry point ``battgen.llm``) trains through ``battgen train-generator`` and samples
through ``battgen generate``::

    generator = CrystalLLMGenerator(model="path/to/model")
    batch = generator.generate(StructureBatch(), 100, {"task": "conditional", "band_gap_eV": 0.2}, seed=0)
    generator.last_run_stats  # sampled, parsed, failures by reason, throughput

Modules: :mod:`.text` (crystal text format, augmentation), :mod:`.prompts` (all templates),
:mod:`.model` (tokenizer, base model, LoRA, 4 bit), :mod:`.train` (both training stages),
:mod:`.sampling` (sampling and parsing), :mod:`.presets` (named hyper-parameter sets).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from battgen.batch import StructureBatch
from battgen.generate.base import TrainableGenerator
from battgen.generate.conditions import (
    SCALAR_CONDITIONS,
    satisfies_element_conditions,
    validate_element_conditions,
)
from battgen.generate.llm.prompts import (
    TASKS,
    PromptConditions,
    conditional_prompt,
    infill_prompt,
    unconditional_prompt,
)
from battgen.generate.llm.text import CrystalTextError, TextFormat
from battgen.models import ModelFormatError, read_manifest
from battgen.progress import Bar

ARCHITECTURE = "crystal-llm"
SAMPLING_KEYS = ("temperature", "top_p", "max_new_tokens", "batch_size", "max_attempts")
CONDITION_KEYS = ("task", *SCALAR_CONDITIONS, "required_elements", "forbidden_elements", "formula", "mask_element",
                  *SAMPLING_KEYS)
DEFAULT_TEMPERATURE = 0.9  # crystal-text-llm samples with T 0.7-1.0 and top-p 0.9-0.99
DEFAULT_TOP_P = 0.95
INFILL_MAX_NEW_TOKENS = 8  # an element symbol and a newline
# a sample may run this much longer than the longest training answer before it is cut (and counted truncated)
ANSWER_MARGIN = 1.25
LEGACY_ANSWER_LIMIT = 1024  # models trained before the longest answer was recorded
ELEMENT_CONDITIONS_NOT_MET = "element_conditions_not_met"  # parsed, but breaks required/forbidden elements


def validate_generation_conditions(conditions: dict[str, Any] | None) -> dict[str, Any]:
    """Checked conditions with defaults filled in; unknown keys or bad values raise ValueError."""
    conditions = dict(conditions or {})
    unknown = sorted(set(conditions) - set(CONDITION_KEYS))
    if unknown:
        raise ValueError(f"unknown llm condition(s) {unknown}; allowed: {list(CONDITION_KEYS)}")
    targets = {key: conditions[key] for key in SCALAR_CONDITIONS if conditions.get(key) is not None}
    for key, value in targets.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
            raise ValueError(f"condition {key} must be a finite number, got {value!r}")
    required, forbidden = validate_element_conditions(conditions)
    formula = conditions.get("formula")
    if formula is not None:
        from pymatgen.core import Composition, Element

        try:
            composition = Composition(str(formula))
        except Exception as exc:  # noqa: BLE001 - pymatgen raises several types for bad formulas
            raise ValueError(f"formula {formula!r} is not a chemical formula") from exc
        # pymatgen accepts unknown symbols as dummy species; a prompt must name real elements.
        if not composition.elements or not all(isinstance(el, Element) for el in composition.elements):
            raise ValueError(f"formula {formula!r} is not a chemical formula of real elements")
        formula = composition.reduced_formula
    steering = bool(targets or required or forbidden or formula)
    task = conditions.get("task") or ("conditional" if steering else "unconditional")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if task == "unconditional" and (targets or formula or required):
        raise ValueError("an unconditional task takes no targets, formula or required elements; use task: conditional")
    if task == "conditional" and not steering:
        raise ValueError("task conditional needs at least one target, formula or element constraint")
    mask_element = conditions.get("mask_element")
    if mask_element is not None and task != "infill":
        raise ValueError("mask_element applies to task: infill only")
    temperature = float(conditions.get("temperature", DEFAULT_TEMPERATURE))
    top_p = float(conditions.get("top_p", DEFAULT_TOP_P))
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    integers = {}
    for key, default in (("max_new_tokens", None), ("batch_size", 16), ("max_attempts", None)):
        value = conditions.get(key, default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
        integers[key] = value
    return {
        "task": task, "targets": targets, "required_elements": required, "forbidden_elements": forbidden,
        "formula": formula, "mask_element": mask_element, "temperature": temperature, "top_p": top_p, **integers,
    }


class CrystalLLMGenerator(TrainableGenerator):
    """Crystal structures sampled as text from a LoRA-tuned causal language model."""

    name = "llm"
    architecture = ARCHITECTURE

    def __init__(self, model: str | Path, device: str = "auto", progress: bool = False, **options: Any) -> None:
        if options:
            raise ValueError(f"unknown llm generator option(s) {sorted(options)}; allowed: model, device, progress")
        super().__init__(model, device)
        from battgen.generate.llm.model import load_base_model, load_tokenizer, resolve_quantization
        from battgen.generate.llm.train import PROMPT_VERSION, SETTINGS_FILENAME

        self.progress = progress
        self.manifest = read_manifest(self.model_dir, architecture=ARCHITECTURE)
        settings = json.loads((self.model_dir / SETTINGS_FILENAME).read_text(encoding="utf-8"))
        if settings.get("prompt_version") != PROMPT_VERSION:
            raise ModelFormatError(
                f"{self.model_dir}: prompt version {settings.get('prompt_version')!r}, this battgen writes "
                f"{PROMPT_VERSION}; retrain the model"
            )
        self.settings = settings
        self.decimals = TextFormat.from_dict(settings["decimals"])
        self.max_length = int(settings["max_length_tokens"])
        self.tokenizer = load_tokenizer(self.model_dir / "tokenizer")
        base = settings["base_model"]
        base_path = self.model_dir / "base_model" if base == "base_model" else base
        # A model trained in 4 bit samples in 4 bit on a GPU, in full precision elsewhere.
        quantize = bool(settings.get("quantize_4bit")) and resolve_quantization(True, True,
                                                                                 self.device.startswith("cuda"))
        base_model = load_base_model(base_path, quantize_4bit=quantize, device=self.device)
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(base_model, self.model_dir / "adapter")
        # Merged weights sample faster; a quantised base cannot be merged.
        self.model = peft_model if quantize else peft_model.merge_and_unload()
        self.model.eval()
        self.last_run_stats: dict[str, Any] = {}

    @classmethod
    def default_hyperparameters(cls) -> dict[str, Any]:
        from battgen.generate.llm.train import default_hyperparameters

        return default_hyperparameters()

    @classmethod
    def train(cls, splits: Any, model_dir: Path, hyperparameters: dict[str, Any], seed: int = 0,
              resume_from: Path | None = None, device: str = "cpu") -> dict[str, Any]:
        from battgen.generate.llm.train import train_crystal_llm

        return train_crystal_llm(splits, model_dir, hyperparameters, seed=seed, resume_from=resume_from, device=device)

    # --- prompts -----------------------------------------------------------------------------------
    def _prompt_conditions(self, checked: dict[str, Any]) -> PromptConditions:
        return PromptConditions(
            formula=checked["formula"],
            required_elements=tuple(checked["required_elements"]),
            forbidden_elements=tuple(checked["forbidden_elements"]),
            scalars=tuple(checked["targets"].items()),
        )

    def _infill_jobs(self, seeds: StructureBatch, checked: dict[str, Any], n_attempts: int, seed: int) -> list:
        """(seed index, masked element) for each attempt: seeds in turn, a seeded random element of each."""
        if len(seeds) == 0:
            raise ValueError("task infill needs seed structures (the config's 'input' batch)")
        mask = checked["mask_element"]
        candidates = [i for i, s in enumerate(seeds.structures)
                      if mask is None or mask in {el.symbol for el in s.composition.elements}]
        if not candidates:
            raise ValueError(f"no seed structure contains mask_element {mask!r}")
        rng = np.random.default_rng([seed, 11])
        jobs = []
        for attempt in range(n_attempts):
            index = candidates[attempt % len(candidates)]
            elements = sorted(el.symbol for el in seeds.structures[index].composition.elements)
            jobs.append((index, mask or str(rng.choice(elements))))
        return jobs

    # --- sampling ----------------------------------------------------------------------------------
    def generate(self, seed_structures: StructureBatch, n: int, conditions: dict[str, Any] | None = None,
                 seed: int = 0) -> StructureBatch:
        from battgen.generate.llm.sampling import batch_seed, parse_infill_sample, parse_structure_sample, sample_texts

        checked = validate_generation_conditions(conditions)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        task = checked["task"]
        max_attempts = checked["max_attempts"] or max(3 * n, n + checked["batch_size"])
        if task == "infill":
            jobs = self._infill_jobs(seed_structures, checked, max_attempts, seed)
            prompts = [infill_prompt(seed_structures.structures[i], element, self.decimals) for i, element in jobs]
        else:
            jobs = [None] * max_attempts
            if task == "unconditional":
                fixed = unconditional_prompt()
            else:
                fixed = conditional_prompt(self._prompt_conditions(checked))
            prompts = [fixed] * max_attempts
        # + 1 for the beginning-of-sequence token; learned positions (GPT-2) cap prompt + answer length.
        longest_prompt = max(len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) + 1 for p in set(prompts))
        room = self.max_length - longest_prompt
        longest_answer = self.settings.get("longest_answer_tokens")
        # never the whole context of a 131k-position base: one endless sample would hold a GPU batch for hours
        answer_limit = int(ANSWER_MARGIN * longest_answer) + 2 if longest_answer else LEGACY_ANSWER_LIMIT
        limit = room if task == "infill" else min(room, answer_limit)
        default = INFILL_MAX_NEW_TOKENS if task == "infill" else limit
        max_new_tokens = min(checked["max_new_tokens"] or default, limit)
        if max_new_tokens < 1:
            raise ValueError(
                f"the prompt ({longest_prompt} tokens) leaves no room in the model's {self.max_length} positions"
            )

        required, forbidden = checked["required_elements"], checked["forbidden_elements"]
        failures: Counter = Counter()
        structures, rows = [], []
        n_sampled, n_parsed = 0, 0
        started = time.perf_counter()
        batch_size = checked["batch_size"]
        progress = Bar(total=n, desc="llm sampling", unit="struct", disable=not self.progress)
        for batch_index, start in enumerate(range(0, max_attempts, batch_size)):
            if len(structures) >= n:
                break
            batch_prompts = prompts[start:start + batch_size]
            samples = sample_texts(self.model, self.tokenizer, batch_prompts, checked["temperature"], checked["top_p"],
                                   max_new_tokens, batch_seed(seed, batch_index), self.device)
            for offset, sample in enumerate(samples):
                n_sampled += 1
                attempt = start + offset
                try:
                    if task == "infill":
                        parent_index, masked = jobs[attempt]
                        proposed = parse_infill_sample(sample)
                        structure = seed_structures.structures[parent_index].copy()
                        structure.replace_species({masked: proposed})
                    else:
                        structure = parse_structure_sample(sample)
                except CrystalTextError as exc:
                    failures[exc.reason] += 1
                    continue
                n_parsed += 1
                if not satisfies_element_conditions(structure.composition, required, forbidden):
                    failures[ELEMENT_CONDITIONS_NOT_MET] += 1
                    continue
                if len(structures) >= n:
                    continue  # keep counting the rest of this batch, but return only n rows
                row = {"row_id": self.row_id(len(structures)), "generator": self.name, "parent_row_id": None}
                if task == "infill":
                    row["parent_row_id"] = seed_structures.meta[parent_index]["row_id"]
                    row["infill_masked_element"] = masked
                    row["infill_proposed_element"] = proposed
                row.update(self._row_metadata(checked, structure, attempt))
                structures.append(structure)
                rows.append(row)
                progress.update(1)
        progress.close()
        wall_time_s = time.perf_counter() - started
        self.last_run_stats = {
            "task": task,
            "n_requested": n,
            "n_sampled": n_sampled,
            "n_parsed": n_parsed,
            "n_returned": len(structures),
            "parse_rate": n_parsed / n_sampled if n_sampled else None,
            "failures": dict(sorted(failures.items())),
            "max_new_tokens": max_new_tokens,
            "wall_time_s": round(wall_time_s, 3),
            "samples_per_s": n_sampled / wall_time_s if wall_time_s > 0 else None,
            "structures_per_s": len(structures) / wall_time_s if wall_time_s > 0 else None,
        }
        run_columns = {"llm_run_n_sampled": n_sampled, "llm_run_n_parsed": n_parsed,
                       "llm_run_failures": dict(sorted(failures.items()))}
        for row in rows:
            row.update(run_columns)
        return StructureBatch(structures, rows)

    def _row_metadata(self, checked: dict[str, Any], structure, attempt: int) -> dict[str, Any]:
        return {
            "model_sha256": self.manifest["content_sha256"],
            "prompt_task": checked["task"],
            "sample_index": attempt,
            "formula": structure.composition.reduced_formula,
            **{f"target_{key}": value for key, value in checked["targets"].items()},
            "target_formula": checked["formula"],
            "required_elements": checked["required_elements"],
            "forbidden_elements": checked["forbidden_elements"],
            "temperature": checked["temperature"],
            "top_p": checked["top_p"],
        }


__all__ = ["CrystalLLMGenerator", "validate_generation_conditions", "ARCHITECTURE"]
