"""Every prompt template of the crystal language model, and the training examples built from them.

Three tasks, as in crystal-text-llm (Gruver et al. 2024) and seed 000 §2.3:

- ``unconditional``: ``"Below is a description of a bulk material.\\n"`` then the crystal text;
- ``conditional``: the same header with condition sentences (reduced formula, required / excluded
  elements, and the scalar targets of :data:`battgen.generate.conditions.SCALAR_CONDITIONS`);
- ``infill``: a crystal text with every site of one element replaced by ``[MASK]``; the answer is the
  element symbol.

An example is ``prompt + answer``; the model learns the answer (and, in pre-training, the prompt too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pymatgen.core import Element, Structure

from battgen.generate.conditions import SCALAR_CONDITIONS
from battgen.generate.llm.text import TextFormat, mask_element_text, structure_to_text

TASKS = ("unconditional", "conditional", "infill")
HEADER = "Below is a description of a bulk material."
MASK = "[MASK]"
INFILL_HEADER = f"Below is a partial description of a bulk material where one element has been replaced with {MASK}:\n"
INFILL_QUESTION = f"Which element replaces {MASK}?\n"

# One sentence per scalar condition: the number format keeps prompts short and the digits meaningful.
SCALAR_SENTENCES = {
    "formation_energy_per_atom_eV": "The formation energy is {:.2f} eV/atom.",
    "band_gap_eV": "The band gap is {:.2f} eV.",
    "e_above_hull_eV_per_atom": "The energy above hull is {:.3f} eV/atom.",
    "gravimetric_capacity_mAh_per_g": "The gravimetric capacity is {:.0f} mAh/g.",
    "channel_radius_A": "The channel radius is {:.2f} A.",
}
assert set(SCALAR_SENTENCES) == set(SCALAR_CONDITIONS), "every scalar condition needs a prompt sentence"


@dataclass(frozen=True)
class PromptConditions:
    """What a conditional prompt states; every field optional."""

    formula: str | None = None
    required_elements: tuple[str, ...] = ()
    forbidden_elements: tuple[str, ...] = ()
    scalars: tuple[tuple[str, float], ...] = ()  # (condition key, target), in SCALAR_CONDITIONS order


def unconditional_prompt() -> str:
    return HEADER + "\n"


def conditional_prompt(conditions: PromptConditions) -> str:
    sentences = [HEADER]
    if conditions.formula:
        sentences.append(f"The reduced formula is {conditions.formula}.")
    if conditions.required_elements:
        sentences.append(f"The elements include {', '.join(conditions.required_elements)}.")
    if conditions.forbidden_elements:
        sentences.append(f"The elements exclude {', '.join(conditions.forbidden_elements)}.")
    order = {key: i for i, key in enumerate(SCALAR_CONDITIONS)}
    for key, value in sorted(conditions.scalars, key=lambda item: order[item[0]]):
        sentences.append(SCALAR_SENTENCES[key].format(float(value)))
    return " ".join(sentences) + "\n"


def infill_prompt(structure: Structure, element: str, decimals: TextFormat) -> str:
    return INFILL_HEADER + mask_element_text(structure, element, decimals, MASK) + INFILL_QUESTION


def parse_infill_answer(text: str) -> str | None:
    """The element symbol an infilling answer proposes (its first word), or None."""
    words = text.split()
    return words[0] if words and Element.is_valid_symbol(words[0]) else None


@dataclass(frozen=True)
class TrainingExample:
    task: str
    prompt: str
    answer: str


def sample_prompt_conditions(
    structure: Structure,
    scalar_values: dict[str, float | None],
    rng: np.random.Generator,
    element_pool: list[str],
    condition_dropout: float,
) -> PromptConditions:
    """Conditions a training row truly has, each kept with probability ``1 - condition_dropout`` (at least
    one kept), so the model learns to follow any subset of them."""
    elements = sorted(el.symbol for el in structure.composition.elements)
    candidates: list[tuple[str, Any]] = [("formula", structure.composition.reduced_formula)]
    n_required = int(rng.integers(1, len(elements) + 1))
    candidates.append(("required_elements", tuple(sorted(rng.choice(elements, n_required, replace=False).tolist()))))
    absent = [s for s in element_pool if s not in elements]
    if absent:
        n_forbidden = int(rng.integers(1, min(3, len(absent)) + 1))
        forbidden = sorted(rng.choice(absent, n_forbidden, replace=False).tolist())
        candidates.append(("forbidden_elements", tuple(forbidden)))
    candidates.extend(("scalar", (key, value)) for key, value in scalar_values.items() if value is not None)
    keep = rng.random(len(candidates)) >= condition_dropout
    if not keep.any():
        keep[int(rng.integers(len(candidates)))] = True
    fields: dict[str, Any] = {"scalars": []}
    for (kind, value), kept in zip(candidates, keep):
        if not kept:
            continue
        if kind == "scalar":
            fields["scalars"].append(value)
        else:
            fields[kind] = value
    fields["scalars"] = tuple(fields["scalars"])
    return PromptConditions(**fields)


def make_training_example(
    task: str,
    structure: Structure,
    scalar_values: dict[str, float | None],
    rng: np.random.Generator,
    decimals: TextFormat,
    element_pool: list[str],
    condition_dropout: float = 0.5,
) -> TrainingExample:
    """One example of ``task`` for an (already augmented) structure."""
    if task == "unconditional":
        return TrainingExample(task, unconditional_prompt(), structure_to_text(structure, decimals))
    if task == "conditional":
        conditions = sample_prompt_conditions(structure, scalar_values, rng, element_pool, condition_dropout)
        return TrainingExample(task, conditional_prompt(conditions), structure_to_text(structure, decimals))
    if task == "infill":
        elements = sorted(el.symbol for el in structure.composition.elements)
        element = str(rng.choice(elements))
        return TrainingExample(task, infill_prompt(structure, element, decimals), element + "\n")
    raise ValueError(f"unknown task {task!r}; known: {TASKS}")


def task_probabilities(mixture: dict[str, float]) -> tuple[list[str], np.ndarray]:
    """Validated (tasks, probabilities) from a ``{task: weight}`` mapping (weights need not sum to 1)."""
    unknown = sorted(set(mixture) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown} in the task mixture; known: {TASKS}")
    tasks = [task for task in TASKS if float(mixture.get(task, 0)) > 0]
    weights = np.array([float(mixture[task]) for task in tasks])
    if any(float(w) < 0 for w in mixture.values()) or not tasks:
        raise ValueError(f"task mixture needs non-negative weights, at least one positive; got {mixture}")
    return tasks, weights / weights.sum()
