"""``battgen.model``: a trained model (generator, predictor, potential) as one node.

The node's repository holds the model directory written by ``battgen`` (:mod:`battgen.models`): the
weights or Hugging Face directory and ``battgen-model.yaml``; training checkpoints are left out. The
manifest's identity is copied into queryable attributes: ``architecture``, ``kind``, ``content_sha256``,
``hyperparameters``, ``training`` (training-data hash, split seed, steps ...) and ``metrics``. The
training batch, the split seed and the hyper-parameters are also inputs of the CalcJob that created the
node, so the graph answers "which data trained this model".
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from aiida import orm

from battgen.models import MANIFEST_FILENAME, ModelFormatError, model_file_paths, read_manifest


class ModelData(orm.Data):
    """A trained model directory with its manifest as attributes."""

    @classmethod
    def from_directory(cls, model_dir: str | Path, **kwargs: Any) -> ModelData:
        """Store ``model_dir`` (verified against its manifest); raises ModelFormatError when it does not match."""
        model_dir = Path(model_dir)
        manifest = read_manifest(model_dir, verify=True)
        node = cls(**kwargs)
        for path in model_file_paths(model_dir):
            node.base.repository.put_object_from_file(str(path), path.relative_to(model_dir).as_posix())
        node.base.repository.put_object_from_file(str(model_dir / MANIFEST_FILENAME), MANIFEST_FILENAME)
        for key in ("architecture", "kind", "content_sha256", "model_format_version", "hyperparameters", "training",
                    "metrics"):
            node.base.attributes.set(key, manifest.get(key))
        node.base.attributes.set("n_files", len(manifest.get("files") or {}))
        node.base.attributes.set("size_bytes", sum(p.stat().st_size for p in model_file_paths(model_dir)))
        return node

    @property
    def architecture(self) -> str:
        return self.base.attributes.get("architecture")

    @property
    def kind(self) -> str:
        return self.base.attributes.get("kind")

    @property
    def content_sha256(self) -> str:
        return self.base.attributes.get("content_sha256")

    @property
    def manifest_path(self) -> str:
        return MANIFEST_FILENAME

    def export_to(self, target: str | Path) -> Path:
        """Copy the model directory to ``target`` (created) and verify it; returns the path."""
        target = Path(target)
        target.mkdir(parents=True, exist_ok=True)
        self.base.repository.copy_tree(target)
        manifest = read_manifest(target, verify=True)
        if manifest.get("content_sha256") != self.content_sha256:
            raise ModelFormatError(f"exported model in {target} does not match node <{self.pk}>")
        return target

    def verify(self) -> bool:
        """Re-hash the stored files against the manifest (True when intact)."""
        with tempfile.TemporaryDirectory() as scratch:
            try:
                self.export_to(Path(scratch) / "model")
            except ModelFormatError:
                return False
        return True

