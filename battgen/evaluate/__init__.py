"""Generation metrics (CDVAE definitions, uniqueness/novelty, S.U.N., target agreement) and
``battgen evaluate``; see :mod:`battgen.evaluate.metrics`."""

from battgen.evaluate.fingerprints import COVERAGE_CUTOFFS, FeatureScaler, FingerprintCache, coverage
from battgen.evaluate.metrics import EvaluationSettings, GenerationMetrics, evaluate_generation, write_outputs
from battgen.evaluate.reconstruction import reconstruction_metrics
from battgen.evaluate.targets import target_agreement

__all__ = [
    "COVERAGE_CUTOFFS",
    "EvaluationSettings",
    "FeatureScaler",
    "FingerprintCache",
    "GenerationMetrics",
    "coverage",
    "evaluate_generation",
    "reconstruction_metrics",
    "target_agreement",
    "write_outputs",
]
