"""The crystal language model's text layer: format, round trip, augmentation, prompts, parse failures,
condition checking and the 4-bit / base-model messages. No training here (see test_crystal_llm.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from battgen.generate.llm import validate_generation_conditions
from battgen.generate.llm.model import (
    NO_CUDA_ERROR_MESSAGE,
    NO_CUDA_FALLBACK_MESSAGE,
    BaseModelUnavailableError,
    load_base_model,
    lora_target_modules,
    resolve_quantization,
    wrap_with_lora,
)
from battgen.generate.llm.prompts import (
    MASK,
    PromptConditions,
    conditional_prompt,
    infill_prompt,
    make_training_example,
    parse_infill_answer,
    task_probabilities,
)
from battgen.generate.llm.sampling import Sample, parse_infill_sample, parse_structure_sample, parse_structure_texts
from battgen.generate.llm.text import (
    CrystalTextError,
    TextFormat,
    augment_structure,
    structure_to_text,
    text_to_structure,
)

ELEMENTS = ["Li", "O", "Co", "Mn", "Fe", "P", "Na", "Si"]


def licoo2() -> Structure:
    lattice = Lattice.from_parameters(2.82, 2.82, 14.05, 90, 90, 120)
    return Structure(lattice, ["Li", "Co", "O", "O"], [[0, 0, 0.5], [0, 0, 0], [0, 0, 0.2604], [0, 0, 0.7396]])


def periodic_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    diff = np.abs(np.asarray(a) - np.asarray(b))
    return np.minimum(diff, 1 - diff)


def assert_round_trip(structure: Structure, fmt: TextFormat) -> None:
    """structure -> text -> structure is exact to the printed precision; text -> structure -> text is exact."""
    text = structure_to_text(structure, fmt)
    parsed = text_to_structure(text)
    assert [s.symbol for s in parsed.species] == [s.symbol for s in structure.species]
    tolerance = 0.5 * 10.0 ** -np.array([fmt.length_decimals, fmt.angle_decimals, fmt.coordinate_decimals]) + 1e-9
    assert np.all(np.abs(np.array(parsed.lattice.abc) - structure.lattice.abc) <= tolerance[0])
    assert np.all(np.abs(np.array(parsed.lattice.angles) - structure.lattice.angles) <= tolerance[1])
    assert np.all(periodic_difference(parsed.frac_coords, structure.frac_coords) <= tolerance[2])
    assert structure_to_text(parsed, fmt) == text


def test_text_format_of_licoo2():
    text = structure_to_text(licoo2())
    assert text == (
        "2.8 2.8 14.1\n90 90 120\nLi\n0.00 0.00 0.50\nCo\n0.00 0.00 0.00\nO\n0.00 0.00 0.26\nO\n0.00 0.00 0.74\n"
    )


def test_coordinates_are_wrapped_and_never_print_one_or_minus_zero():
    structure = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0.999, -0.0001, 1.25], [-0.5, 0.004, 0.996]])
    text = structure_to_text(structure)
    assert text.splitlines()[3] == "0.00 0.00 0.25"
    assert text.splitlines()[5] == "0.50 0.00 0.00"
    assert "-" not in text and "1.00" not in text


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.floats(2.0, 20.0), min_size=3, max_size=3),
    angles=st.lists(st.floats(60.0, 120.0), min_size=3, max_size=3),
    coords=st.lists(st.lists(st.floats(-1.5, 2.5), min_size=3, max_size=3), min_size=1, max_size=6),
    species=st.lists(st.sampled_from(ELEMENTS), min_size=6, max_size=6),
    coordinate_decimals=st.integers(1, 4),
    length_decimals=st.integers(0, 3),
)
def test_round_trip_is_exact_to_printed_precision(
    lengths, angles, coords, species, coordinate_decimals, length_decimals
):
    try:
        lattice = Lattice.from_parameters(*lengths, *angles)
    except ValueError:
        return
    if not lattice.volume > 1.0:
        return
    structure = Structure(lattice, species[: len(coords)], coords)
    fmt = TextFormat(length_decimals=length_decimals, coordinate_decimals=coordinate_decimals)
    try:
        assert_round_trip(structure, fmt)
    except CrystalTextError as exc:
        # Only a cell that rounding makes degenerate (angles summing to 360 degrees) may fail, never a healthy one.
        assert exc.reason == "invalid_lattice"
        assert sum(round(a) for a in angles) >= 350 or min(round(a) for a in angles) <= 0


def test_text_format_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown text-format"):
        TextFormat.from_dict({"digits": 3})


@pytest.mark.shared_data
def test_round_trip_on_real_mp20_rows(shared_data):
    from battgen.sources.files import read_mp20_csv

    batch, _ = read_mp20_csv(shared_data / "mp20_mini_slices" / "raw_mp20_dataset_mini.csv", max_rows=150)
    assert len(batch) == 150
    for fmt in (TextFormat(), TextFormat(2, 1, 3)):
        for structure in batch.structures:
            assert_round_trip(structure, fmt)


def test_augmentation_keeps_the_structure_and_changes_the_text():
    structure = licoo2().make_supercell([1, 1, 2], in_place=False)
    matcher = StructureMatcher()
    texts = set()
    for seed in range(5):
        augmented = augment_structure(structure, np.random.default_rng(seed))
        assert matcher.fit(augmented, structure)
        assert augmented.composition == structure.composition
        texts.add(structure_to_text(augmented))
    assert structure_to_text(structure) not in texts
    assert len(texts) == 5
    # Seeded: the same generator seed gives the same augmentation.
    same = [structure_to_text(augment_structure(structure, np.random.default_rng(3))) for _ in range(2)]
    assert same[0] == same[1]


# --- parse failures -----------------------------------------------------------------------------------
BROKEN_TEXTS = {
    "empty": "  \n\n",
    "unparseable_lattice": "4.0 4.0\n90 90 90\nNa\n0.00 0.00 0.00\n",
    "invalid_lattice": "4.0 4.0 4.0\n170 170 170\nNa\n0.00 0.00 0.00\n",
    "unknown_element": "4.0 4.0 4.0\n90 90 90\nXx\n0.00 0.00 0.00\n",
    "wrong_coordinate_count": "4.0 4.0 4.0\n90 90 90\nNa\n0.00 0.00\n",
    "truncated": "4.0 4.0 4.0\n90 90 90\nNa\n0.00 0.00 0.00\nCl\n",
    "no_sites": "4.0 4.0 4.0\n90 90 90\n",
}


@pytest.mark.parametrize("reason", sorted(BROKEN_TEXTS))
def test_each_broken_text_fails_with_its_reason(reason):
    with pytest.raises(CrystalTextError) as info:
        text_to_structure(BROKEN_TEXTS[reason]) if reason != "empty" else parse_structure_sample(Sample("", True))
    assert info.value.reason == reason


def test_parser_counts_failures_by_reason_and_overlap_is_not_a_failure():
    overlapping = "4.0 4.0 4.0\n90 90 90\nNa\n0.00 0.00 0.00\nCl\n0.00 0.00 0.01\n"
    texts = list(BROKEN_TEXTS.values()) + [BROKEN_TEXTS["truncated"], overlapping]
    structures, failures = parse_structure_texts(texts)
    assert sum(s is not None for s in structures) == 1
    assert len(structures[-1]) == 2  # the overlapping atoms parse; screening rejects them
    assert failures == {**{reason: 1 for reason in BROKEN_TEXTS}, "truncated": 2}


def test_a_sample_cut_by_the_token_budget_is_truncated():
    complete_sites = "4.0 4.0 4.0\n90 90 90\nNa\n0.00 0.00 0.00\n"
    assert len(parse_structure_sample(Sample(complete_sites, True))) == 1
    with pytest.raises(CrystalTextError) as info:
        parse_structure_sample(Sample(complete_sites, False))
    assert info.value.reason == "truncated"


def test_infill_answer_parsing():
    assert parse_infill_sample(Sample("Co\nextra", True)) == "Co"
    assert parse_infill_answer("Mn") == "Mn"
    for text, reason in (("", "empty"), ("Qq\n", "unknown_element"), ("0.5\n", "unknown_element")):
        with pytest.raises(CrystalTextError) as info:
            parse_infill_sample(Sample(text, True))
        assert info.value.reason == reason


# --- prompts ------------------------------------------------------------------------------------------
def test_conditional_prompt_contains_the_targets():
    prompt = conditional_prompt(PromptConditions(
        formula="LiCoO2", required_elements=("Co", "Li"), forbidden_elements=("Pb",),
        scalars=(("band_gap_eV", 0.5), ("formation_energy_per_atom_eV", -1.5), ("channel_radius_A", 1.25),
                 ("gravimetric_capacity_mAh_per_g", 274.0)),
    ))
    assert prompt.startswith("Below is a description of a bulk material.")
    for fragment in ("LiCoO2", "include Co, Li", "exclude Pb", "band gap is 0.50 eV", "formation energy is -1.50",
                     "channel radius is 1.25", "capacity is 274 mAh/g"):
        assert fragment in prompt
    assert prompt.endswith("\n")


def test_infill_prompt_masks_every_site_of_one_element():
    prompt = infill_prompt(licoo2(), "O", TextFormat())
    assert prompt.count(MASK + "\n") == 2 and "\nO\n" not in prompt and "\nCo\n" in prompt


def test_training_examples_carry_true_conditions():
    rng = np.random.default_rng(0)
    structure = licoo2()
    seen = set()
    for _ in range(40):
        example = make_training_example("conditional", structure, {"band_gap_eV": 2.7}, rng, TextFormat(), ELEMENTS,
                                        0.5)
        assert example.answer == structure_to_text(structure)
        seen.update(f for f in ("LiCoO2", "2.70 eV", "include", "exclude") if f in example.prompt)
        if "exclude" in example.prompt:
            excluded = example.prompt.split("exclude ")[1].split(".")[0].split(", ")
            assert not set(excluded) & {"Li", "Co", "O"}
    assert seen == {"LiCoO2", "2.70 eV", "include", "exclude"}
    infill = make_training_example("infill", structure, {}, rng, TextFormat(), ELEMENTS)
    assert infill.answer.strip() in {"Li", "Co", "O"}


def test_task_mixture_is_validated():
    tasks, weights = task_probabilities({"unconditional": 2, "infill": 2, "conditional": 0})
    assert tasks == ["unconditional", "infill"] and np.allclose(weights, [0.5, 0.5])
    with pytest.raises(ValueError, match="unknown task"):
        task_probabilities({"translate": 1})


def test_generation_conditions_are_checked():
    checked = validate_generation_conditions({"band_gap_eV": 0.5, "forbidden_elements": ["Pb"]})
    assert checked["task"] == "conditional" and checked["targets"] == {"band_gap_eV": 0.5}
    assert validate_generation_conditions(None)["task"] == "unconditional"
    with pytest.raises(ValueError, match="unknown llm condition"):
        validate_generation_conditions({"band_gap": 0.5})
    with pytest.raises(ValueError, match="top_p"):
        validate_generation_conditions({"top_p": 1.5})
    with pytest.raises(ValueError, match="use task: conditional"):
        validate_generation_conditions({"task": "unconditional", "band_gap_eV": 0.5})
    with pytest.raises(ValueError, match="not a chemical formula"):
        validate_generation_conditions({"formula": "Li2Qz"})


# --- base models, LoRA targets, 4 bit -----------------------------------------------------------------
def test_four_bit_without_cuda_gives_the_clear_message(recwarn, capsys):
    with pytest.raises(RuntimeError, match="4-bit quantisation needs a CUDA GPU"):
        resolve_quantization(True, cpu_fallback=False, has_cuda=False)
    assert "quantize_4bit_cpu_fallback" in NO_CUDA_ERROR_MESSAGE
    assert resolve_quantization(True, cpu_fallback=True, has_cuda=False) is False
    assert NO_CUDA_FALLBACK_MESSAGE in capsys.readouterr().out
    assert any(NO_CUDA_FALLBACK_MESSAGE in str(w.message) for w in recwarn)
    assert resolve_quantization(True, cpu_fallback=False, has_cuda=True) is True
    assert resolve_quantization(False, cpu_fallback=False, has_cuda=False) is False


def test_missing_base_model_fails_with_a_clear_message(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never touch the network in tests
    for name in (str(tmp_path / "no-such-model"), "meta-llama/Llama-3.1-8B"):
        with pytest.raises(BaseModelUnavailableError, match="base_model: null to pre-train"):
            load_base_model(name)


def test_lora_targets_follow_the_architecture():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    assert lora_target_modules(llama, None) == (["q_proj", "k_proj", "v_proj", "o_proj"], False)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=32))
    assert lora_target_modules(gpt2, None) == (["c_attn"], True)
    wrapped = wrap_with_lora(llama, r=8, alpha=32, dropout=0.05)
    trainable = {name for name, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert {name.split(".")[-4] for name in trainable} == {"q_proj", "k_proj", "v_proj", "o_proj"}
