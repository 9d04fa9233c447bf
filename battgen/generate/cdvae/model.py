"""The CDVAE network (Xie et al., ICLR 2022) with Con-CDVAE conditioning (Ye et al., 2024).

Parts, and what differs from the papers (and why):

* **Encoder** (:class:`DimeNetPPEncoder`): DimeNet++-style directional message passing on the periodic
  graph (cutoff 7 Å, 20 nearest neighbours): edge messages m_ji from atom embeddings and a Bessel radial
  basis with DimeNet's polynomial envelope; each interaction block updates m_ji from the triplets
  (k -> j -> i) with a basis of the angle at j; atom outputs are edge sums gated by the radial basis; the
  crystal vector is the mean over atoms (CDVAE's ``readout: mean``), followed by linear mu / log sigma^2
  heads. Simplification: the angular basis is Bessel(d_kj) x cos(l theta) (l < ``num_spherical``) instead
  of DimeNet's spherical Bessel x spherical harmonics (the same information: radial x angular products
  of the kj distance and the kji angle; torch-geometric's DimeNet++ needs torch-sparse, not installable).
  Invariant to rotation, translation and permutation because it sees only distances and angles.
* **Decoder** (:class:`PaiNNDecoder`): an equivariant PaiNN-style network (Schütt et al. 2021) instead
  of GemNet-dQ. Scalars s_i start from the atom-type embedding concatenated with the (conditioned)
  latent z, as in CDVAE's GemNet decoder; vectors v_i start at zero and are filled only from unit
  vectors of minimum-image periodic displacements r_j + k·L - r_i, so the per-atom coordinate score
  (a linear map of v_i) rotates with the structure and is unchanged by translation. GemNet-dQ adds
  quadruplet/triplet interactions; PaiNN's scalar-vector messages give the same symmetry with far less
  compute, which is what a CPU-only machine can train (and what later diffusion crystal models such as
  DiffCSP use in spirit). The type head is an MLP on s_i over Z = 1 ... 100.
* **Heads from z** (MLPs, CDVAE's ``fc_num_layers`` deep): number of atoms (classes 0 ... max_atoms,
  cross entropy), composition (per-element logits; cross entropy against every atom's type, CDVAE's
  element-type distribution loss), 6 lattice parameters (Niggli lengths / N^(1/3) and angles,
  standardised; MSE), optional property heads (standardised; MSE on rows that have a value).
* **Noise and losses** as CDVAE: a per-crystal level from geometric σ (10 -> 0.01 Å, 50 levels) for
  Cartesian noise wrapped back into the cell, and type σ (5 -> 0.01) mixing the predicted composition
  into the one-hot type before sampling a noisy type; coordinate loss 0.5·σ²·|pred/σ - Δ/σ²|² with Δ the
  minimum-image displacement noisy -> clean; type loss CE/σ_type; KL to N(0, I) with weight β.
  The decoder always sees the true lattice in training (CDVAE's ``teacher_forcing_lattice``, which CDVAE
  switches off after ``teacher_forcing_max_epoch``; ours stays on: sampling uses predicted lattices, and
  the decoder is trained on real ones).
* **Conditions** (Con-CDVAE): standardised scalars expanded on Gaussians and element presence
  (known-present / known-absent multi-hot vectors, randomly revealed in training so that at sampling a
  few required / forbidden elements are an in-distribution input; seed 004's "stronger emphasis on the
  presence or absence of specific elements") are embedded, concatenated with z and mapped back to the
  latent size; the atom-count, lattice and composition heads and the decoder read this conditioned
  latent, the property heads read z itself (Con-CDVAE's property predictors: z must carry the property).
  The prior p(z | c) is either (``latent_prior: gaussian``, default) one Gaussian N(mu(c), sigma(c)²)
  trained jointly on the detached posterior samples (Gaussian negative log-likelihood), or
  (``latent_prior: diffusion``, Con-CDVAE's published prior) a DDPM over the posterior means trained in a
  second stage with the VAE frozen (:class:`LatentDiffusionPrior`). Sampling draws z from p(z | c).
* **Sampling**: CDVAE's annealed Langevin dynamics (step_lr·(σ/σ_L)² steps, ``n_step_each`` per level,
  types set to the decoder's argmax after every step), batched over crystals; forbidden elements are
  masked out of the composition and type logits.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from battgen.generate.cdvae.data import MAX_ATOMIC_NUMBER, CrystalBatch, Scaler
from battgen.generate.cdvae.graph import (
    PeriodicGraph,
    Triplets,
    cart_to_frac,
    crystal_index_of,
    frac_to_cart,
    lattice_params_to_matrix,
    minimum_image_displacement,
    periodic_radius_graph,
    triplet_cosines,
)

# Niggli-reduced cells have every angle in [60°, 120°]; predicted angles are clamped there (a hair
# inside 120° so three obtuse angles still span a volume).
MIN_ANGLE_DEG, MAX_ANGLE_DEG = 60.0, 119.0
MIN_LENGTH_A = 1.0  # shortest lattice vector a sample may get (Å)
LATENT_PRIORS = ("gaussian", "diffusion")  # p(z | c) of a conditional model


def mlp(n_in: int, n_hidden: int, n_out: int, n_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(n_layers):
        layers += [nn.Linear(width, n_hidden), nn.SiLU()]
        width = n_hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class BesselBasis(nn.Module):
    """DimeNet's radial basis sqrt(2/c)·sin(nπd/c)/d times the smooth polynomial envelope (p = 5)."""

    def __init__(self, num_radial: int, cutoff: float, envelope_exponent: int = 5) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer("frequencies", torch.arange(1, num_radial + 1, dtype=torch.float32) * math.pi)
        self.p = envelope_exponent + 1

    def envelope(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p
        a, b, c = -(p + 1) * (p + 2) / 2, p * (p + 2), -p * (p + 1) / 2
        value = 1 / x + a * x ** (p - 1) + b * x**p + c * x ** (p + 1)
        return torch.where(x < 1, value, torch.zeros_like(x))

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        x = (distance / self.cutoff).clamp_min(1e-6)[:, None]
        return self.envelope(x) * torch.sin(self.frequencies * x) * math.sqrt(2 / self.cutoff)


class InteractionBlock(nn.Module):
    """DimeNet++ interaction: m_ji += up(Σ_k down(m_kj ⊙ rbf_kj) ⊙ sbf_kji), with residual layers."""

    def __init__(self, hidden: int, num_radial: int, num_spherical: int) -> None:
        super().__init__()
        inner = max(hidden // 2, 4)
        self.lin_rbf = nn.Linear(num_radial, hidden, bias=False)
        self.lin_sbf = nn.Linear(num_radial * num_spherical, inner, bias=False)
        self.lin_ji = nn.Linear(hidden, hidden)
        self.lin_kj = nn.Linear(hidden, hidden)
        self.lin_down = nn.Linear(hidden, inner, bias=False)
        self.lin_up = nn.Linear(inner, hidden, bias=False)
        self.residual = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, message: torch.Tensor, rbf: torch.Tensor, sbf: torch.Tensor, triplets: Triplets) -> torch.Tensor:
        x_ji = F.silu(self.lin_ji(message))
        x_kj = F.silu(self.lin_kj(message)) * self.lin_rbf(rbf)
        x_kj = F.silu(self.lin_down(x_kj))
        per_triplet = x_kj[triplets.edge_in] * self.lin_sbf(sbf)
        gathered = torch.zeros_like(x_kj).index_add_(0, triplets.edge_out, per_triplet)
        updated = x_ji + F.silu(self.lin_up(gathered))
        return message + self.residual(updated)


class DimeNetPPEncoder(nn.Module):
    """SE(3)- and permutation-invariant periodic encoder: crystal -> (mu, log σ²) of q(z | crystal)."""

    def __init__(self, hidden: int, latent_dim: int, num_blocks: int, num_radial: int, num_spherical: int,
                 cutoff: float, max_neighbors: int) -> None:
        super().__init__()
        self.num_spherical = num_spherical
        self.rbf = BesselBasis(num_radial, cutoff)
        self.embedding = nn.Embedding(MAX_ATOMIC_NUMBER + 1, hidden)
        self.edge_rbf = nn.Linear(num_radial, hidden)
        self.edge_init = nn.Linear(3 * hidden, hidden)
        self.blocks = nn.ModuleList(InteractionBlock(hidden, num_radial, num_spherical) for _ in range(num_blocks))
        self.output_rbf = nn.ModuleList(nn.Linear(num_radial, hidden, bias=False) for _ in range(num_blocks + 1))
        self.output_mlp = nn.ModuleList(mlp(hidden, hidden, hidden, 1) for _ in range(num_blocks + 1))
        self.edge_norm = 1.0 / math.sqrt(max_neighbors)  # keeps atom sums O(1) at any neighbour count
        self.fc_mu = nn.Linear(hidden, latent_dim)
        self.fc_logvar = nn.Linear(hidden, latent_dim)

    def atom_output(self, index: int, message: torch.Tensor, rbf: torch.Tensor, target: torch.Tensor,
                    n_atoms: int) -> torch.Tensor:
        gated = self.output_rbf[index](rbf) * message
        summed = torch.zeros(n_atoms, gated.shape[1], dtype=gated.dtype, device=gated.device)
        return self.output_mlp[index](summed.index_add_(0, target, gated) * self.edge_norm)

    def forward(self, batch: CrystalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        graph = PeriodicGraph(batch.edge_source, batch.edge_target, batch.edge_offset)
        triplets = Triplets(batch.triplet_in, batch.triplet_out)
        displacement = graph.displacement(batch.frac_coords, batch.lattices, batch.crystal_index)
        distance = displacement.norm(dim=-1)
        rbf = self.rbf(distance)
        cos_angle = triplet_cosines(displacement, triplets)
        angle = torch.arccos(cos_angle.clamp(-1 + 1e-6, 1 - 1e-6))
        orders = torch.arange(self.num_spherical, device=angle.device, dtype=angle.dtype)
        angular = torch.cos(angle[:, None] * orders)  # (T, L)
        sbf = (rbf[triplets.edge_in][:, :, None] * angular[:, None, :]).flatten(1)

        h = self.embedding(batch.atom_types)
        message = F.silu(self.edge_init(torch.cat(
            [h[graph.source], h[graph.target], F.silu(self.edge_rbf(rbf))], dim=-1)))
        n_atoms = len(batch.atom_types)
        atom_features = self.atom_output(0, message, rbf, graph.target, n_atoms)
        for index, block in enumerate(self.blocks, start=1):
            message = block(message, rbf, sbf, triplets)
            atom_features = atom_features + self.atom_output(index, message, rbf, graph.target, n_atoms)
        pooled = torch.zeros(batch.n_crystals, atom_features.shape[1], dtype=atom_features.dtype,
                             device=atom_features.device).index_add_(0, batch.crystal_index, atom_features)
        pooled = pooled / batch.num_atoms[:, None].to(pooled.dtype)
        return self.fc_mu(pooled), self.fc_logvar(pooled)


class PaiNNLayer(nn.Module):
    """One PaiNN message + update step on scalars s (N, H) and vectors v (N, 3, H)."""

    def __init__(self, hidden: int, num_radial: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.message_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 3 * hidden))
        self.message_filter = nn.Linear(num_radial, 3 * hidden)
        self.vector_u = nn.Linear(hidden, hidden, bias=False)
        self.vector_v = nn.Linear(hidden, hidden, bias=False)
        self.update_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, 3 * hidden))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, s, v, source, target, unit, radial, edge_norm):
        phi = self.message_mlp(s)[source] * self.message_filter(radial)
        ds, dv_vector, dv_direction = phi.split(self.hidden, dim=-1)
        dv = dv_vector[:, None, :] * v[source] + dv_direction[:, None, :] * unit[:, :, None]
        s = s + torch.zeros_like(s).index_add_(0, target, ds) * edge_norm
        v = v + torch.zeros_like(v).index_add_(0, target, dv) * edge_norm
        u_v, v_v = self.vector_u(v), self.vector_v(v)
        v_norm = torch.sqrt((v_v**2).sum(dim=1) + 1e-8)
        a_vv, a_sv, a_ss = self.update_mlp(torch.cat([self.norm(s), v_norm], dim=-1)).split(self.hidden, dim=-1)
        v = v + a_vv[:, None, :] * u_v
        s = s + a_sv * (u_v * v_v).sum(dim=1) + a_ss
        return s, v


class PaiNNDecoder(nn.Module):
    """Equivariant score network: (z, noisy fractional coords, types, lattice) -> per-atom Cartesian
    score (N, 3) (CDVAE's ``pred_cart_coord_diff``, to be divided by σ) and type logits (N, 100)."""

    def __init__(self, hidden: int, latent_dim: int, num_layers: int, num_radial: int, cutoff: float,
                 max_neighbors: int) -> None:
        super().__init__()
        self.cutoff, self.max_neighbors = cutoff, max_neighbors
        self.embedding = nn.Embedding(MAX_ATOMIC_NUMBER + 1, hidden)
        self.atom_latent = nn.Linear(hidden + latent_dim, hidden)
        self.rbf = BesselBasis(num_radial, cutoff)
        self.layers = nn.ModuleList(PaiNNLayer(hidden, num_radial) for _ in range(num_layers))
        self.score_out = nn.Linear(hidden, 1, bias=False)  # linear in v: keeps equivariance
        self.type_out = mlp(hidden, hidden, MAX_ATOMIC_NUMBER, 1)
        self.edge_norm = 1.0 / math.sqrt(max_neighbors)

    def forward(self, z: torch.Tensor, frac_coords: torch.Tensor, atom_types: torch.Tensor,
                lattices: torch.Tensor, num_atoms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        crystal_index = crystal_index_of(num_atoms)
        graph = periodic_radius_graph(frac_coords.detach(), lattices.detach(), num_atoms, self.cutoff,
                                      self.max_neighbors)
        # the graph wraps coordinates into [0, 1): displacements must use the same wrapped coordinates
        wrapped = frac_coords - torch.floor(frac_coords.detach())
        displacement = graph.displacement(wrapped, lattices, crystal_index)
        distance = displacement.norm(dim=-1).clamp_min(1e-6)
        unit = displacement / distance[:, None]
        radial = self.rbf(distance)
        s = self.atom_latent(torch.cat([self.embedding(atom_types), z[crystal_index]], dim=-1))
        v = torch.zeros(len(s), 3, s.shape[1], dtype=s.dtype, device=s.device)
        for layer in self.layers:
            s, v = layer(s, v, graph.source, graph.target, unit, radial, self.edge_norm)
        return self.score_out(v).squeeze(-1), self.type_out(s)


class ConditionEmbedding(nn.Module):
    """Con-CDVAE condition encoder: standardised scalars on a Gaussian basis, plus element presence."""

    def __init__(self, n_scalars: int, use_element_presence: bool, hidden: int, n_gaussians: int = 16) -> None:
        super().__init__()
        self.n_scalars, self.use_element_presence = n_scalars, use_element_presence
        self.register_buffer("centers", torch.linspace(-3.0, 3.0, n_gaussians))
        self.width = float(6.0 / (n_gaussians - 1))
        n_in = n_scalars * n_gaussians + (2 * MAX_ATOMIC_NUMBER if use_element_presence else 0)
        self.net = mlp(n_in, hidden, hidden, 1)

    def forward(self, scalars: torch.Tensor, present: torch.Tensor, absent: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.n_scalars:
            expanded = torch.exp(-((scalars[:, :, None] - self.centers) ** 2) / (2 * self.width**2))
            parts.append(expanded.flatten(1))
        if self.use_element_presence:
            parts += [present, absent]
        return self.net(torch.cat(parts, dim=-1))


class ConditionalPrior(nn.Module):
    """p(z | c) = N(mu(c), diag exp(log σ²(c))): Con-CDVAE's prior network, trained on posterior latents."""

    def __init__(self, n_scalars: int, use_element_presence: bool, hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.embedding = ConditionEmbedding(n_scalars, use_element_presence, hidden)
        self.net = mlp(hidden, hidden, 2 * latent_dim, 1)

    def forward(self, scalars, present, absent) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(F.silu(self.embedding(scalars, present, absent))).chunk(2, dim=-1)
        return mu, logvar.clamp(-10.0, 5.0)

    def negative_log_likelihood(self, z, scalars, present, absent) -> torch.Tensor:
        mu, logvar = self(scalars, present, absent)
        return (0.5 * (logvar + (z - mu) ** 2 / logvar.exp() + math.log(2 * math.pi))).sum(dim=1).mean()


class LatentDiffusionPrior(nn.Module):
    """Con-CDVAE's second-stage prior p(z | c): a DDPM (Ho et al. 2020) over the encoder's latent means.

    Trained after the VAE, on the frozen encoder's posterior means of the training set, to predict the
    noise ε added at a random step t of a linear β schedule (Con-CDVAE's: 1000 steps, β 1e-4 -> 0.02) from
    (z_t, condition embedding, sinusoidal embedding of t); sampled by ancestral DDPM steps from N(0, I).
    Unlike the single Gaussian p(z | c), it can put several modes under one condition (element presence).
    The denoiser is a residual MLP of our own (Con-CDVAE uses a small fully connected U-Net)."""

    def __init__(self, n_scalars: int, use_element_presence: bool, hidden: int, latent_dim: int, n_steps: int,
                 beta_start: float, beta_end: float, n_layers: int = 3) -> None:
        super().__init__()
        self.latent_dim, self.n_steps, self.time_dim = latent_dim, n_steps, hidden
        self.embedding = ConditionEmbedding(n_scalars, use_element_presence, hidden)
        self.input = nn.Linear(latent_dim + 2 * hidden, hidden)
        self.blocks = nn.ModuleList(mlp(hidden + 2 * hidden, hidden, hidden, 1) for _ in range(n_layers))
        self.output = nn.Linear(hidden, latent_dim)
        betas = torch.linspace(beta_start, beta_end, n_steps, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        self.register_buffer("betas", betas.float())
        self.register_buffer("alphas_cumprod", alphas_cumprod.float())
        self.register_buffer("posterior_variance", (betas * (1 - previous) / (1 - alphas_cumprod)).float())
        self.register_buffer("trained", torch.zeros((), dtype=torch.bool))  # set once the second stage finished

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        half = self.time_dim // 2
        frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        angles = t.float()[:, None] * frequencies[None]
        embedded = torch.cat([angles.sin(), angles.cos()], dim=-1)
        return F.pad(embedded, (0, self.time_dim - 2 * half))

    def predict_noise(self, z_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        context = torch.cat([condition, self.time_embedding(t)], dim=-1)
        h = self.input(torch.cat([z_t, context], dim=-1))
        for block in self.blocks:
            h = h + block(torch.cat([F.silu(h), context], dim=-1))
        return self.output(F.silu(h))

    def loss(self, z0: torch.Tensor, scalars, present, absent,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise-prediction MSE at one random step per latent."""
        n = z0.shape[0]
        t = torch.randint(0, self.n_steps, (n,), generator=generator, device=z0.device)
        noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        abar = self.alphas_cumprod[t][:, None]
        z_t = abar.sqrt() * z0 + (1 - abar).sqrt() * noise
        return F.mse_loss(self.predict_noise(z_t, t, self.embedding(scalars, present, absent)), noise)

    @torch.no_grad()
    def sample(self, n: int, scalars, present, absent, generator: torch.Generator) -> torch.Tensor:
        """Ancestral DDPM sampling of ``n`` latents for the given (per-row) condition tensors."""
        device = self.betas.device
        condition = self.embedding(scalars, present, absent)
        z = torch.randn(n, self.latent_dim, generator=generator, device=device)
        for step in range(self.n_steps - 1, -1, -1):
            t = torch.full((n,), step, dtype=torch.long, device=device)
            beta, abar = self.betas[step], self.alphas_cumprod[step]
            mean = (z - beta / (1 - abar).sqrt() * self.predict_noise(z, t, condition)) / (1 - beta).sqrt()
            if step == 0:
                return mean
            z = mean + self.posterior_variance[step].sqrt() * torch.randn(z.shape, generator=generator, device=device)
        return z


def geometric_levels(begin: float, end: float, n: int) -> torch.Tensor:
    return torch.tensor(np.exp(np.linspace(np.log(begin), np.log(end), n)), dtype=torch.float32)


class CDVAE(nn.Module):
    """The whole model; ``config`` is the architecture part of the hyper-parameters (saved with it)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        c = self.config
        latent, hidden = int(c["latent_dim"]), int(c["hidden_dim"])
        self.max_atoms = int(c["max_atoms"])
        self.scalar_condition_keys: list[str] = list(c.get("scalar_conditions") or [])
        self.use_element_presence = bool(c.get("element_presence", False))
        self.property_keys: list[str] = list(c.get("property_targets") or [])
        self.encoder = DimeNetPPEncoder(hidden, latent, int(c["encoder_blocks"]), int(c["num_radial"]),
                                        int(c["num_spherical"]), float(c["cutoff_A"]), int(c["max_neighbors"]))
        self.decoder = PaiNNDecoder(hidden, latent, int(c["decoder_layers"]), int(c["num_radial"]),
                                    float(c["cutoff_A"]), int(c["max_neighbors"]))
        n_fc = int(c["fc_num_layers"])
        self.fc_num_atoms = mlp(latent, hidden, self.max_atoms + 1, n_fc)
        self.fc_lattice = mlp(latent, hidden, 6, n_fc)
        self.fc_composition = mlp(latent, hidden, MAX_ATOMIC_NUMBER, n_fc)
        self.fc_property = mlp(latent, hidden, len(self.property_keys), n_fc) if self.property_keys else None
        if self.conditional:
            n_scalars = len(self.scalar_condition_keys)
            self.condition_embedding = ConditionEmbedding(n_scalars, self.use_element_presence, hidden)
            self.condition_mix = mlp(latent + hidden, hidden, latent, 1)
            self.prior = ConditionalPrior(n_scalars, self.use_element_presence, hidden, latent)
        self.latent_prior_kind = str(c.get("latent_prior", "gaussian"))
        if self.latent_prior_kind not in LATENT_PRIORS:
            raise ValueError(f"latent_prior must be one of {LATENT_PRIORS}, got {self.latent_prior_kind!r}")
        if self.latent_prior_kind == "diffusion":
            if not self.conditional:
                raise ValueError("latent_prior: diffusion is Con-CDVAE's prior p(z | c): it needs conditions")
            self.latent_prior = LatentDiffusionPrior(
                len(self.scalar_condition_keys), self.use_element_presence, hidden, latent,
                int(c["prior_diffusion_steps"]), float(c["prior_beta_start"]), float(c["prior_beta_end"]))
        # Con-CDVAE reads properties off the unconditioned z (so that z must carry them); models saved before
        # this setting existed read the conditioned latent.
        self.property_head_input = str(c.get("property_head_input", "conditioned"))
        self.register_buffer("sigmas", geometric_levels(c["sigma_begin_A"], c["sigma_end_A"], int(c["num_noise_levels"])))
        self.register_buffer("type_sigmas", geometric_levels(c["type_sigma_begin"], c["type_sigma_end"],
                                                             int(c["num_noise_levels"])))
        self.lattice_scaler = Scaler([0.0] * 6, [1.0] * 6)
        self.property_scaler = Scaler([0.0] * len(self.property_keys), [1.0] * len(self.property_keys))
        self.condition_scaler = Scaler([0.0] * len(self.scalar_condition_keys), [1.0] * len(self.scalar_condition_keys))

    @property
    def device(self) -> torch.device:
        """Where the weights live; every tensor the sampler makes is made there."""
        return self.sigmas.device

    @property
    def conditional(self) -> bool:
        return bool(self.scalar_condition_keys) or self.use_element_presence

    # --- latent --------------------------------------------------------------------------------------
    def encode(self, batch: CrystalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(batch)

    def condition_latent(self, z: torch.Tensor, condition: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """Con-CDVAE: the latent every head and the decoder read (z itself for an unconditional model)."""
        if not self.conditional:
            return z
        embedded = self.condition_embedding(condition["scalars"], condition["present"], condition["absent"])
        return self.condition_mix(torch.cat([z, embedded], dim=-1))

    def property_latent(self, z: torch.Tensor, zc: torch.Tensor) -> torch.Tensor:
        """What the property head reads: z (Con-CDVAE) or, for older models, the conditioned latent."""
        return z if self.property_head_input == "z" else zc

    def predict_lattice(self, z: torch.Tensor, num_atoms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lengths (Å) and angles (degrees) from the lattice head, clamped to sane Niggli ranges."""
        params = self.lattice_scaler.inverse(self.fc_lattice(z))
        lengths = (params[:, :3] * num_atoms.to(z.dtype).pow(1.0 / 3.0)[:, None]).clamp_min(MIN_LENGTH_A)
        angles = params[:, 3:].clamp(MIN_ANGLE_DEG, MAX_ANGLE_DEG)
        return lengths, angles

    # --- training ------------------------------------------------------------------------------------
    def losses(self, batch: CrystalBatch, condition: dict[str, torch.Tensor] | None, weights: dict[str, float]
               ) -> dict[str, torch.Tensor]:
        """Every CDVAE loss term for one batch and their weighted sum under ``"loss"``."""
        mu, logvar = self.encode(batch)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        zc = self.condition_latent(z, condition)
        terms: dict[str, torch.Tensor] = {}
        terms["num_atom_loss"] = F.cross_entropy(self.fc_num_atoms(zc), batch.num_atoms.clamp(max=self.max_atoms))
        lattice_target = torch.cat([batch.lengths_A / batch.num_atoms.float().pow(1.0 / 3.0)[:, None], batch.angles_deg], 1)
        terms["lattice_loss"] = F.mse_loss(self.fc_lattice(zc), self.lattice_scaler.transform(lattice_target))
        composition_logits = self.fc_composition(zc)[batch.crystal_index]
        per_atom = F.cross_entropy(composition_logits, batch.atom_types - 1, reduction="none")
        terms["composition_loss"] = self._crystal_mean(per_atom, batch).mean()

        # CDVAE noising: one σ level per crystal for coordinates and (independently) for types
        level = torch.randint(0, len(self.sigmas), (batch.n_crystals,), device=zc.device)
        sigma_atom = self.sigmas[level][batch.crystal_index]
        type_level = torch.randint(0, len(self.type_sigmas), (batch.n_crystals,), device=zc.device)
        type_sigma_atom = self.type_sigmas[type_level][batch.crystal_index]
        type_probs = F.one_hot(batch.atom_types - 1, MAX_ATOMIC_NUMBER).float() + \
            F.softmax(composition_logits.detach(), dim=-1) * type_sigma_atom[:, None]
        noisy_types = torch.multinomial(type_probs, 1).squeeze(1) + 1
        cart = frac_to_cart(batch.frac_coords, batch.lattices, batch.crystal_index)
        noisy_cart = cart + torch.randn_like(cart) * sigma_atom[:, None]
        noisy_frac = cart_to_frac(noisy_cart, batch.lattices, batch.crystal_index) % 1.0
        score, type_logits = self.decoder(zc, noisy_frac, noisy_types, batch.lattices, batch.num_atoms)
        to_clean = minimum_image_displacement(noisy_frac, batch.frac_coords, batch.lattices, batch.crystal_index)
        coord_per_atom = ((to_clean / sigma_atom[:, None] ** 2 - score / sigma_atom[:, None]) ** 2).sum(1)
        terms["coord_loss"] = self._crystal_mean(0.5 * coord_per_atom * sigma_atom**2, batch).mean()
        type_per_atom = F.cross_entropy(type_logits, batch.atom_types - 1, reduction="none") / type_sigma_atom
        terms["type_loss"] = self._crystal_mean(type_per_atom, batch).mean()
        terms["kld_loss"] = torch.mean(-0.5 * torch.sum(1 + logvar - mu**2 - logvar.exp(), dim=1))

        total = (weights["cost_natom"] * terms["num_atom_loss"] + weights["cost_lattice"] * terms["lattice_loss"]
                 + weights["cost_composition"] * terms["composition_loss"] + weights["cost_coord"] * terms["coord_loss"]
                 + weights["cost_type"] * terms["type_loss"] + weights["beta"] * terms["kld_loss"])
        if self.fc_property is not None:
            known = ~torch.isnan(batch.properties)
            if known.any():
                target = self.property_scaler.transform(torch.nan_to_num(batch.properties))
                predicted = self.fc_property(self.property_latent(z, zc))
                terms["property_loss"] = ((predicted - target) ** 2)[known].mean()
                total = total + weights["cost_property"] * terms["property_loss"]
        if self.conditional:
            terms["prior_loss"] = self.prior.negative_log_likelihood(
                z.detach(), condition["scalars"], condition["present"], condition["absent"])
            total = total + weights["cost_prior"] * terms["prior_loss"]
        terms["loss"] = total
        return terms

    @staticmethod
    def _crystal_mean(per_atom: torch.Tensor, batch: CrystalBatch) -> torch.Tensor:
        summed = torch.zeros(batch.n_crystals, dtype=per_atom.dtype, device=per_atom.device)
        return summed.index_add_(0, batch.crystal_index, per_atom) / batch.num_atoms.to(per_atom.dtype)

    # --- sampling ------------------------------------------------------------------------------------
    def sample_latent(self, n: int, condition: dict[str, torch.Tensor] | None, generator: torch.Generator) -> torch.Tensor:
        """z from N(0, I), or from the conditional prior p(z | c) of a conditional model (the Gaussian one, or
        the second-stage diffusion prior with ``latent_prior: diffusion``)."""
        latent_dim = int(self.config["latent_dim"])
        noise = torch.randn(n, latent_dim, generator=generator, device=self.device)
        if not self.conditional:
            return noise
        if self.latent_prior_kind == "diffusion":
            if not bool(self.latent_prior.trained):
                raise ValueError("the diffusion prior of this model was not trained (training stopped before its "
                                 "second stage): resume the training to finish it")
            return self.latent_prior.sample(n, condition["scalars"], condition["present"], condition["absent"],
                                            generator)
        mu, logvar = self.prior(condition["scalars"], condition["present"], condition["absent"])
        return mu + noise * torch.exp(0.5 * logvar)

    def sample_composition(self, probabilities: torch.Tensor, num_atoms: torch.Tensor,
                           generator: torch.Generator) -> torch.Tensor:
        """CDVAE's: round p·N per element, draw the remainder from the leftover probabilities, shuffle."""
        sampled = []
        elements = torch.arange(1, MAX_ATOMIC_NUMBER + 1, device=probabilities.device)
        for probs, n in zip(probabilities, num_atoms.tolist()):
            counts = torch.round(probs * n).long()
            types = torch.repeat_interleave(elements, counts)
            if len(types) < n:
                leftover = (probs - counts.float() / n).clamp_min(0.0)
                if leftover.sum() <= 0:
                    leftover = probs
                extra = torch.multinomial(leftover, n - len(types), replacement=True, generator=generator) + 1
                types = torch.cat([types, extra])
            types = types[torch.randperm(len(types), generator=generator, device=types.device)][:n]
            sampled.append(types)
        return torch.cat(sampled)

    @torch.no_grad()
    def langevin_dynamics(
        self,
        z: torch.Tensor,
        generator: torch.Generator,
        n_step_each: int = 100,
        step_lr: float = 1e-4,
        num_atoms: torch.Tensor | None = None,
        forbidden_types: torch.Tensor | None = None,
        progress: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Annealed Langevin dynamics from the (conditioned) latents ``z`` (B, latent).

        ``num_atoms`` (B,) forces the atom counts; ``forbidden_types`` (100,) bool masks atomic numbers
        out of the composition and type predictions. Returns atom types, fractional coordinates in [0, 1),
        lattices (Å), lengths (Å), angles (degrees) and atom counts."""
        if num_atoms is None:
            logits = self.fc_num_atoms(z)
            logits[:, 0] = -torch.inf  # a crystal has at least one atom
            num_atoms = logits.argmax(dim=-1)
        num_atoms = num_atoms.long()
        lengths, angles = self.predict_lattice(z, num_atoms)
        lattices = lattice_params_to_matrix(lengths, angles)
        composition_logits = self.fc_composition(z)
        if forbidden_types is not None:
            composition_logits[:, forbidden_types] = -torch.inf
        atom_types = self.sample_composition(F.softmax(composition_logits, dim=-1), num_atoms, generator)
        crystal_index = crystal_index_of(num_atoms)
        frac = torch.rand(len(atom_types), 3, generator=generator, device=z.device)
        sigma_last = float(self.sigmas[-1])
        total = len(self.sigmas) * n_step_each
        with tqdm(total=total, desc="Langevin steps", disable=not progress, leave=False) as bar:
            for sigma in self.sigmas.tolist():
                step_size = step_lr * (sigma / sigma_last) ** 2
                for _ in range(n_step_each):
                    score, type_logits = self.decoder(z, frac, atom_types, lattices, num_atoms)
                    noise = torch.randn(frac.shape, generator=generator, device=z.device) * math.sqrt(2 * step_size)
                    cart = frac_to_cart(frac, lattices, crystal_index) + step_size * score / sigma + noise
                    frac = cart_to_frac(cart, lattices, crystal_index) % 1.0
                    if forbidden_types is not None:
                        type_logits[:, forbidden_types] = -torch.inf
                    atom_types = type_logits.argmax(dim=-1) + 1
                    bar.update(1)
        frac = frac % 1.0
        frac = torch.where(frac >= 1.0, torch.zeros_like(frac), frac)  # float rounding of x % 1 can give 1.0
        return {"atom_types": atom_types, "frac_coords": frac, "lattices": lattices, "lengths_A": lengths,
                "angles_deg": angles, "num_atoms": num_atoms}
