"""Reconstruction match rate and RMSE, as CDVAE's ``RecEval`` (``scripts/compute_metrics.py``).

For each (original, reconstructed) pair: an invalid reconstruction is no match; otherwise
``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3).get_rms_dist(reconstructed, original)`` decides
(None: no match) and its first value is the RMS displacement normalised by ``(V / n_sites)^(1/3)``
(dimensionless). Match rate = matches / pairs; RMSE = mean over matched pairs.

Validity here is CDVAE's structure validity and SMACT composition validity; CDVAE also treats a crystal
whose CrystalNN fingerprint fails as invalid, which is not checked here (it is rare and costs ~15 ms/site).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from tqdm.auto import tqdm

from battgen.screen.charge import is_charge_neutral
from battgen.screen.validity import structure_validity

RECONSTRUCTION_MATCHER_SETTINGS = {"stol": 0.5, "angle_tol": 10.0, "ltol": 0.3}


def normalised_rms_distance(
    reconstructed: Structure, original: Structure, matcher: StructureMatcher | None = None
) -> float | None:
    """``get_rms_dist(...)[0]`` with CDVAE's reconstruction matcher; None when the structures do not match."""
    matcher = matcher or StructureMatcher(**RECONSTRUCTION_MATCHER_SETTINGS)
    try:
        rms = matcher.get_rms_dist(reconstructed, original)
    except Exception:  # noqa: BLE001 - CDVAE counts any matcher failure as no match
        return None
    return None if rms is None else float(rms[0])


def reconstruction_metrics(
    originals: Sequence[Structure], reconstructed: Sequence[Structure], progress: bool = False
) -> dict[str, Any]:
    """Match rate (percent of pairs) and mean normalised RMS distance over matched pairs."""
    if len(originals) != len(reconstructed):
        raise ValueError(f"{len(originals)} originals but {len(reconstructed)} reconstructions: pairs are by order")
    matcher = StructureMatcher(**RECONSTRUCTION_MATCHER_SETTINGS)
    distances: list[float] = []
    n_invalid = 0
    for original, candidate in tqdm(zip(originals, reconstructed), total=len(originals), desc="reconstruction",
                                    disable=not progress):
        if not (structure_validity(candidate) and is_charge_neutral(candidate.composition)):
            n_invalid += 1
            continue
        rms = normalised_rms_distance(candidate, original, matcher)
        if rms is not None:
            distances.append(rms)
    n_pairs = len(originals)
    return {
        "n_reconstruction_pairs": n_pairs,
        "n_reconstruction_invalid": n_invalid,
        "n_reconstruction_matched": len(distances),
        "reconstruction_match_percent": 100.0 * len(distances) / n_pairs if n_pairs else None,
        "reconstruction_rms_dist_normalised": float(np.mean(distances)) if distances else None,
    }
