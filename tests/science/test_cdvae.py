"""CDVAE: symmetry of the networks, training, Langevin sampling, conditions, generator contract."""

import math

import numpy as np
import pytest
import torch
from pymatgen.core import Element, Lattice, Structure
from pymatgen.core.operations import SymmOp

from battgen.batch import StructureBatch
from battgen.generate.base import load_generator
from battgen.generate.cdvae import CDVAEGenerator, preset_hyperparameters
from battgen.generate.cdvae.data import collate, featurize_structure
from battgen.generate.cdvae.model import CDVAE
from battgen.generate.cdvae.train import featurize_batch, model_config, train_cdvae
from battgen.models import ModelFormatError, write_manifest


def _fcc(a):
    return Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])


def training_structures() -> StructureBatch:
    """Eight small real crystals (2-6 atoms; O in six, Li in three), written out by hand so the tests
    need no symmetry tables."""
    u = 0.305  # rutile oxygen parameter
    cells = {
        "LiCl": Structure(_fcc(5.13), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "MgO": Structure(_fcc(4.21), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "Si": Structure(_fcc(5.43), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]]),
        "Li2O": Structure(_fcc(4.61), ["O", "Li", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25], [0.75, 0.75, 0.75]]),
        "SrTiO3": Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                            [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
        "TiO2": Structure(Lattice.tetragonal(4.594, 2.959), ["Ti", "Ti", "O", "O", "O", "O"],
                          [[0, 0, 0], [0.5, 0.5, 0.5], [u, u, 0], [1 - u, 1 - u, 0], [0.5 + u, 0.5 - u, 0.5],
                           [0.5 - u, 0.5 + u, 0.5]]),
        "LiCoO2": Structure(Lattice.from_parameters(4.98, 4.98, 4.98, 32.99, 32.99, 32.99), ["Co", "Li", "O", "O"],
                            [[0, 0, 0], [0.5, 0.5, 0.5], [0.26, 0.26, 0.26], [0.74, 0.74, 0.74]]),
        "ZnO": Structure(Lattice.hexagonal(3.25, 5.2), ["Zn", "Zn", "O", "O"],
                         [[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0.5], [1 / 3, 2 / 3, 0.382], [2 / 3, 1 / 3, 0.882]]),
    }
    return StructureBatch.from_structures(list(cells.values()), [{"row_id": name} for name in cells])


def tiny_hyperparameters(**overrides):
    return preset_hyperparameters("tiny", **{"max_epochs": None, **overrides})


def train_model_dir(path, batch, **overrides):
    """Train a tiny model on ``batch`` (also its validation set) and write the manifest, as the CLI does."""
    hyperparameters = tiny_hyperparameters(**overrides)
    result = train_cdvae(batch, batch, path, hyperparameters, seed=0)
    write_manifest(path, "generator", "cdvae", hyperparameters, result["training"], result["metrics"])
    return result


@pytest.fixture(scope="module")
def hosts():
    return training_structures()


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory, hosts):
    path = tmp_path_factory.mktemp("cdvae") / "model"
    result = train_model_dir(path, hosts, max_steps=40)
    return path, result


@pytest.fixture(scope="module")
def conditional_model(tmp_path_factory, hosts):
    path = tmp_path_factory.mktemp("cdvae-conditional") / "model"
    train_model_dir(path, hosts, max_steps=20, conditions=["gravimetric_capacity_mAh_per_g", "element_presence"],
                    property_targets=["gravimetric_capacity_mAh_per_g"])
    return path


def _random_rotation(seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))  # proper rotation


def _untrained_model(hosts, **overrides):
    torch.manual_seed(0)
    hyperparameters = tiny_hyperparameters(**overrides)
    records, _ = featurize_batch(hosts, hyperparameters)
    return CDVAE(model_config(hyperparameters, records)).eval(), hyperparameters


# --- symmetry -------------------------------------------------------------------------------------------
def test_encoder_is_invariant_to_rotation_translation_and_permutation(hosts):
    model, hp = _untrained_model(hosts)
    # random displacements break the symmetry ties at the 12th-neighbour boundary, where any k-nearest
    # truncation (CDVAE's too) picks among equidistant atoms by index
    structure = hosts.get("TiO2")[1].copy()
    displacements = np.random.default_rng(0).normal(scale=0.05, size=(len(structure), 3))
    structure = Structure(structure.lattice, structure.species, structure.cart_coords + displacements,
                          coords_are_cartesian=True)
    rotated = structure.copy()
    rotated.apply_operation(SymmOp.from_rotation_and_translation(_random_rotation(), [0, 0, 0]))
    translated = structure.copy()
    translated.translate_sites(list(range(len(structure))), [0.37, -0.21, 0.55], frac_coords=True, to_unit_cell=True)
    permutation = np.random.default_rng(1).permutation(len(structure))
    permuted = Structure(structure.lattice, [structure.species[i] for i in permutation], structure.frac_coords[permutation])
    assert not np.allclose(rotated.lattice.matrix, structure.lattice.matrix)
    # canonical=False: the encoder itself, not the Niggli re-orientation, must provide the invariance
    records = [featurize_structure(s, hp["cutoff_A"], hp["max_neighbors"], canonical=False)
               for s in (structure, rotated, translated, permuted)]
    with torch.no_grad():
        mu, logvar = model.encode(collate(records))
    for other in range(1, 4):
        torch.testing.assert_close(mu[other], mu[0], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(logvar[other], logvar[0], atol=2e-5, rtol=1e-4)
    # ... and it does tell different crystals apart
    other = featurize_structure(hosts.get("Li2O")[1], hp["cutoff_A"], hp["max_neighbors"])
    with torch.no_grad():
        assert not torch.allclose(model.encode(collate([other]))[0][0], mu[0], atol=1e-3)


def test_decoder_scores_rotate_with_the_structure_and_ignore_translation(hosts):
    model, _ = _untrained_model(hosts)
    structure = hosts.get("SrTiO3")[1]
    rotation = torch.tensor(_random_rotation(3), dtype=torch.float32)
    lattice = torch.tensor(structure.lattice.matrix, dtype=torch.float32)[None]
    frac = torch.tensor(structure.frac_coords, dtype=torch.float32)
    frac = (frac + 0.05 * torch.randn(frac.shape, generator=torch.Generator().manual_seed(0))) % 1.0  # noisy
    types = torch.tensor([site.specie.Z for site in structure])
    num_atoms = torch.tensor([len(structure)])
    z = torch.randn(1, model.config["latent_dim"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        score, type_logits = model.decoder(z, frac, types, lattice, num_atoms)
        rotated_score, rotated_types = model.decoder(z, frac, types, lattice @ rotation.T, num_atoms)
        shifted_score, _ = model.decoder(z, (frac + torch.tensor([0.3, 0.6, 0.1])) % 1.0, types, lattice, num_atoms)
    assert score.abs().max() > 1e-4  # a non-trivial field
    torch.testing.assert_close(rotated_score, score @ rotation.T, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(rotated_types, type_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(shifted_score, score, atol=1e-5, rtol=1e-4)


# --- training -------------------------------------------------------------------------------------------
def test_tiny_model_overfits_a_small_set(tmp_path, hosts, trained_model):
    hyperparameters = tiny_hyperparameters()
    initial = train_cdvae(hosts, hosts, tmp_path / "untrained", {**hyperparameters, "max_steps": 0}, seed=0)
    _, result = trained_model
    assert initial["training"]["steps"] == 0 and result["training"]["steps"] == 40
    assert result["training"]["stopped_because"] == "max_steps"
    before, after = initial["metrics"], result["metrics"]
    assert after["val_loss"] < 0.8 * before["val_loss"]
    for term in ("lattice_loss", "composition_loss", "num_atom_loss"):
        assert after[f"val_{term}"] < before[f"val_{term}"], term


def test_rows_missing_a_condition_value_are_dropped(hosts):
    hyperparameters = tiny_hyperparameters(conditions=["band_gap_eV"])
    with_gap = hosts.with_columns(band_gap_eV=[1.0, None, 2.0, None, 0.5, 3.0, None, 1.5])
    records, counts = featurize_batch(with_gap, hyperparameters)
    assert counts == {"n_rows": 8, "n_used": 5, "n_dropped_missing_condition": 3}
    assert sorted(float(r.conditions[0]) for r in records) == [0.5, 1.0, 1.5, 2.0, 3.0]
    with pytest.raises(ValueError, match="unknown key"):
        featurize_batch(hosts, tiny_hyperparameters(conditions=["colour"]))


# --- sampling -------------------------------------------------------------------------------------------
def test_langevin_samples_are_periodic_cells_with_the_requested_atoms(trained_model):
    path, _ = trained_model
    generator = CDVAEGenerator(path, progress=False)
    batch = generator.generate(StructureBatch(), 5, {"n_atoms": 4, "n_step_each": 3}, seed=2)
    assert batch.row_ids == [f"cdvae-{i:06d}" for i in range(5)]
    for meta, structure in batch:
        assert len(structure) == 4
        assert all(structure.lattice.pbc)
        assert np.isfinite(structure.lattice.matrix).all() and structure.volume > 0
        assert (structure.frac_coords >= 0).all() and (structure.frac_coords < 1).all()
        assert meta["generator"] == "cdvae" and meta["parent_row_id"] is None
        assert meta["model_sha256"] == generator.manifest["content_sha256"]
        assert meta["langevin_steps"] == 10 * 3 and meta["conditions"]["n_atoms"] == 4
    free = generator.generate(StructureBatch(), 4, {"n_step_each": 1}, seed=2)
    assert all(1 <= len(s) <= generator.model.max_atoms for s in free.structures)


def test_sampling_is_deterministic_for_a_seed(trained_model):
    generator = CDVAEGenerator(trained_model[0], progress=False)
    first = generator.generate(StructureBatch(), 3, {"n_step_each": 2}, seed=5)
    second = generator.generate(StructureBatch(), 3, {"n_step_each": 2}, seed=5)
    other = generator.generate(StructureBatch(), 3, {"n_step_each": 2}, seed=6)
    assert [s.frac_coords.tolist() for s in first.structures] == [s.frac_coords.tolist() for s in second.structures]
    assert [s.frac_coords.tolist() for s in first.structures] != [s.frac_coords.tolist() for s in other.structures]


def test_reconstruction_keeps_row_links_and_forced_atom_counts(trained_model, hosts):
    generator = CDVAEGenerator(trained_model[0], progress=False)
    part = hosts.select([True, True, False, True, False, False, False, False])
    reconstructed = generator.reconstruct(part, n_step_each=1, force_num_atoms=True)
    assert [m["parent_row_id"] for m in reconstructed.meta] == part.row_ids
    assert [len(s) for s in reconstructed.structures] == [len(s) for s in part.structures]


def test_forbidden_element_never_appears_and_required_elements_always_do(trained_model):
    generator = CDVAEGenerator(trained_model[0], progress=False, max_resample_rounds=3)
    settings = {"n_step_each": 1, "n_atoms": 4}
    unconstrained = generator.generate(StructureBatch(), 8, settings, seed=0)
    assert any("O" in {e.symbol for e in s.composition.elements} for s in unconstrained.structures)  # O is common
    no_oxygen = generator.generate(StructureBatch(), 8, {**settings, "forbidden_elements": ["O"]}, seed=0)
    assert len(no_oxygen) == 8
    assert all("O" not in {e.symbol for e in s.composition.elements} for s in no_oxygen.structures)
    with_lithium = generator.generate(StructureBatch(), 6, {**settings, "required_elements": ["Li"]}, seed=0)
    assert all("Li" in {e.symbol for e in s.composition.elements} for s in with_lithium.structures)
    meta = with_lithium.meta[0] if len(with_lithium) else {}
    # every requested row is either present or counted as unfilled after the bounded resampling
    assert len(with_lithium) + (meta.get("n_unfilled_rows", 6)) == 6
    assert meta.get("n_resample_rounds", 4) <= 4


def test_more_atoms_than_max_atoms_is_refused(trained_model):
    generator = CDVAEGenerator(trained_model[0], progress=False)
    too_many = generator.model.max_atoms + 1
    with pytest.raises(ValueError, match=f"n_atoms {too_many} exceeds this model's max_atoms"):
        generator.generate(StructureBatch(), 1, {"n_atoms": too_many})
    assert len(generator.generate(StructureBatch(), 1, {"n_atoms": generator.model.max_atoms, "n_step_each": 1})) == 1


def test_samples_use_the_training_elements_unless_told_otherwise(trained_model, hosts):
    generator = CDVAEGenerator(trained_model[0], progress=False)
    trained = sorted({el.symbol for s in hosts.structures for el in s.composition.elements})
    assert [Element.from_Z(z).symbol for z in generator.model.config["element_pool"]] == sorted(
        trained, key=lambda symbol: Element(symbol).Z)
    settings = {"n_step_each": 1, "n_atoms": 4}
    default = generator.generate(StructureBatch(), 8, settings, seed=0)
    assert {el.symbol for s in default.structures for el in s.composition.elements} <= set(trained)
    assert sorted(default.meta[0]["conditions"]["element_pool"]) == trained
    pool = generator.generate(StructureBatch(), 6, {**settings, "element_pool": ["Fe", "O"]}, seed=0)
    assert {el.symbol for s in pool.structures for el in s.composition.elements} <= {"Fe", "O"}
    assert generator.generate(StructureBatch(), 1, {**settings, "element_pool": "all"}).meta[0]["conditions"][
        "element_pool"] == "all"
    with pytest.raises(ValueError, match="outside the element pool"):
        generator.generate(StructureBatch(), 1, {**settings, "required_elements": ["Fe"]})
    with pytest.raises(ValueError, match="element_pool must be"):
        generator.generate(StructureBatch(), 1, {**settings, "element_pool": "everything"})


def test_gradients_are_clipped_element_wise_as_cdvae(tmp_path, hosts, monkeypatch):
    """CDVAE's conf/train/default.yaml: gradient_clip_val 0.5, gradient_clip_algorithm value."""
    assert preset_hyperparameters("paper")["gradient_clip_value"] == 0.5
    seen = []
    original = torch.nn.utils.clip_grad_value_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_value_", lambda params, value: seen.append(value) or original(params, value))
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: pytest.fail("CDVAE clips by value"))
    train_cdvae(hosts, hosts, tmp_path / "m", tiny_hyperparameters(max_steps=2, progress=False), seed=0)
    assert seen == [0.5, 0.5]


def test_unconditional_model_rejects_conditions(trained_model):
    generator = CDVAEGenerator(trained_model[0], progress=False)
    with pytest.raises(ValueError, match="not trained on condition"):
        generator.generate(StructureBatch(), 1, {"band_gap_eV": 1.0})
    with pytest.raises(ValueError, match="unknown CDVAE condition"):
        generator.generate(StructureBatch(), 1, {"temperature_K": 300})
    with pytest.raises(ValueError, match="both required and forbidden"):
        generator.generate(StructureBatch(), 1, {"required_elements": ["O"], "forbidden_elements": ["O"]})
    with pytest.raises(ValueError, match="no property head"):
        generator.generate(StructureBatch(), 1, {"latent_optimisation": {"property": "band_gap_eV", "target": 1}})


def test_conditional_model_takes_its_target_and_rejects_others(conditional_model):
    generator = CDVAEGenerator(conditional_model, progress=False)
    assert generator.model.conditional and generator.model.use_element_presence
    batch = generator.generate(StructureBatch(), 3, {"gravimetric_capacity_mAh_per_g": 400.0, "n_step_each": 1,
                                                     "required_elements": ["Li"]}, seed=0)
    assert all(m["conditions"]["gravimetric_capacity_mAh_per_g"] == 400.0 for m in batch.meta)
    assert all("Li" in {e.symbol for e in s.composition.elements} for s in batch.structures)
    # the conditional prior moves with the target: different capacities give different latents
    condition = generator._condition_tensors(generator._parse_conditions({"gravimetric_capacity_mAh_per_g": 0.0}), 1)
    high = generator._condition_tensors(generator._parse_conditions({"gravimetric_capacity_mAh_per_g": 900.0}), 1)
    with torch.no_grad():
        assert not torch.allclose(generator.model.prior(**_named(condition))[0], generator.model.prior(**_named(high))[0])
    with pytest.raises(ValueError, match="not trained on condition"):
        generator.generate(StructureBatch(), 1, {"channel_radius_A": 1.5})


def _named(condition):
    return {"scalars": condition["scalars"], "present": condition["present"], "absent": condition["absent"]}


def test_latent_optimisation_moves_the_predicted_property(conditional_model):
    generator = CDVAEGenerator(conditional_model, progress=False)
    target = 1500.0
    common = {"n_step_each": 1, "n_atoms": 3}
    plain = generator.generate(StructureBatch(), 4, common, seed=1)
    optimised = generator.generate(StructureBatch(), 4, {**common, "latent_optimisation": {
        "property": "gravimetric_capacity_mAh_per_g", "target": target, "steps": 60, "lr": 0.1}}, seed=1)
    key = "predicted_gravimetric_capacity_mAh_per_g"
    error_plain = np.mean([abs(m[key] - target) for m in plain.meta])
    error_optimised = np.mean([abs(m[key] - target) for m in optimised.meta])
    assert error_optimised < error_plain


# --- model directory ------------------------------------------------------------------------------------
def test_bad_model_directory_is_a_model_format_error(tmp_path, trained_model):
    with pytest.raises(ModelFormatError):
        CDVAEGenerator(tmp_path)
    with pytest.raises(ModelFormatError, match="cdvae"):
        write_manifest(tmp_path, "generator", "crystal-llm", {})
        CDVAEGenerator(tmp_path)
    generator = load_generator("cdvae", model=trained_model[0], progress=False)
    assert isinstance(generator, CDVAEGenerator) and generator.architecture == "cdvae"


def test_trained_model_records_scalers_and_finite_losses(trained_model):
    generator = CDVAEGenerator(trained_model[0], progress=False)
    _, result = trained_model
    assert all(math.isfinite(v) for k, v in result["metrics"].items() if k.startswith(("train_", "val_")))
    assert len(generator.model.lattice_scaler.mean) == 6
    # the saved lattice statistics are those of the training cells (lengths / N^(1/3) around 2-3 Å)
    assert 1.0 < generator.model.lattice_scaler.mean[0] < 4.0 and 60 <= generator.model.lattice_scaler.mean[3] <= 120
