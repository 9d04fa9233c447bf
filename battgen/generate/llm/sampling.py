"""Sampling texts from the crystal language model and turning them back into structures, counting every
failure by reason (seed 000: only 1,087 of 10,000 LLM samples survived screening, so where samples are
lost matters)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from pymatgen.core import Structure

from battgen.generate.llm.prompts import parse_infill_answer
from battgen.generate.llm.text import EMPTY, TRUNCATED, UNKNOWN_ELEMENT, CrystalTextError, text_to_structure


@dataclass(frozen=True)
class Sample:
    text: str  # the generated continuation, without the prompt and the end-of-sequence token
    finished: bool  # the model emitted end-of-sequence within the token budget


def batch_seed(seed: int, batch_index: int) -> int:
    """A torch seed per sampling batch: the same seed gives the same samples batch by batch."""
    return int(np.random.SeedSequence([seed, batch_index]).generate_state(1)[0])


def sample_texts(model, tokenizer, prompts: list[str], temperature: float, top_p: float, max_new_tokens: int,
                 torch_seed: int, device: str = "cpu") -> list[Sample]:
    """One nucleus-sampled continuation per prompt (prompts left-padded into one batch)."""
    import torch

    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    encoded = [bos + tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(ids) for ids in encoded)
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(ids)) + ids for ids in encoded],
                             dtype=torch.long, device=device)
    attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], dtype=torch.long,
                             device=device)
    torch.manual_seed(torch_seed)  # seeds the CUDA generators too
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids, attention_mask=attention, do_sample=True,
            temperature=float(temperature), top_p=float(top_p), top_k=0, max_new_tokens=int(max_new_tokens),
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
    samples = []
    for row in output[:, width:].tolist():
        finished = tokenizer.eos_token_id in row
        if finished:
            row = row[: row.index(tokenizer.eos_token_id)]
        samples.append(Sample(tokenizer.decode(row, skip_special_tokens=True), finished))
    return samples


def parse_structure_sample(sample: Sample) -> Structure:
    """The structure of a generated crystal text; CrystalTextError (with ``reason``) otherwise. A sample cut
    off by the token budget is ``truncated`` even when its complete sites would parse."""
    if not sample.text.strip():
        raise CrystalTextError(EMPTY, "the model generated nothing")
    if not sample.finished:
        raise CrystalTextError(TRUNCATED, "no end-of-sequence within max_new_tokens")
    return text_to_structure(sample.text)


def parse_infill_sample(sample: Sample) -> str:
    """The element an infilling sample proposes; CrystalTextError otherwise."""
    first_line = sample.text.strip().split("\n", 1)[0].strip() if sample.text.strip() else ""
    if not first_line:
        raise CrystalTextError(EMPTY, "the model proposed nothing")
    element = parse_infill_answer(first_line)
    if element is None:
        raise CrystalTextError(UNKNOWN_ELEMENT, f"{first_line!r} is not an element symbol")
    return element


def parse_structure_texts(texts: list[str]) -> tuple[list[Structure | None], Counter]:
    """Parse finished texts; (structure or None per text, failures counted by reason)."""
    structures: list[Structure | None] = []
    failures: Counter = Counter()
    for text in texts:
        try:
            structures.append(parse_structure_sample(Sample(text, True)))
        except CrystalTextError as exc:
            structures.append(None)
            failures[exc.reason] += 1
    return structures, failures
