"""Trained-model directories: one manifest format for every model battgen trains or loads.

A model directory holds whatever files the framework needs (a torch checkpoint, a Hugging Face model
directory, a tokenizer ...) plus ``battgen-model.yaml``::

    model_format_version: 1
    kind: generator | predictor | potential
    architecture: cdvae | crystal-llm | cgcnn-voltage | ...   # the plugin that can load it
    hyperparameters: {...}        # everything needed to rebuild the network
    training: {...}               # training batch sha256, split seed, steps, wall time ...
    metrics: {...}                # validation numbers, with units in the key names
    files: {relative path: sha256} # every file but the manifest and checkpoints/

The AiiDA layer stores such a directory as one ``battgen.model`` node and copies ``architecture``,
``kind`` and the content hash into queryable attributes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml

MANIFEST_FILENAME = "battgen-model.yaml"
# Training checkpoints (optimiser state, for resuming) live beside the model but are not part of it:
# they are not hashed, and the AiiDA layer does not store them in the model node.
CHECKPOINT_DIRNAME = "checkpoints"
MODEL_FORMAT_VERSION = 1
MODEL_KINDS = ("generator", "predictor", "potential")


class ModelFormatError(ValueError):
    """A model directory is missing, incomplete, or was changed after it was written."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_file_paths(model_dir: Path) -> list[Path]:
    """The files that make up a model: everything but the manifest and ``checkpoints/`` (sorted)."""
    model_dir = Path(model_dir)
    return [
        path for path in sorted(model_dir.rglob("*"))
        if path.is_file() and path.relative_to(model_dir).as_posix() != MANIFEST_FILENAME
        and path.relative_to(model_dir).parts[0] != CHECKPOINT_DIRNAME
    ]


def model_files(model_dir: Path) -> dict[str, str]:
    """Relative path -> sha256 of every model file (see :func:`model_file_paths`)."""
    model_dir = Path(model_dir)
    return {path.relative_to(model_dir).as_posix(): file_sha256(path) for path in model_file_paths(model_dir)}


def content_sha256(files: dict[str, str]) -> str:
    """One hash for a whole model: the sha256 of its sorted ``path sha256`` lines."""
    lines = "".join(f"{name} {digest}\n" for name, digest in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def write_manifest(
    model_dir: Path,
    kind: str,
    architecture: str,
    hyperparameters: dict[str, Any],
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Hash the directory's files and write ``battgen-model.yaml``; returns the manifest."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}")
    model_dir = Path(model_dir)
    files = model_files(model_dir)
    manifest = {
        "model_format_version": MODEL_FORMAT_VERSION,
        "kind": kind,
        "architecture": architecture,
        "hyperparameters": hyperparameters,
        "training": training or {},
        "metrics": metrics or {},
        "files": files,
        "content_sha256": content_sha256(files),
    }
    with open(model_dir / MANIFEST_FILENAME, "w", encoding="utf-8") as handle:
        yaml.safe_dump(manifest, handle, sort_keys=False)
    return manifest


def read_manifest(model_dir: Path, verify: bool = True, architecture: str | None = None) -> dict[str, Any]:
    """Read a model directory's manifest; with ``verify`` check every file's sha256 against it."""
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST_FILENAME
    if not path.is_file():
        raise ModelFormatError(f"{model_dir} is not a battgen model directory (no {MANIFEST_FILENAME})")
    manifest = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    version = manifest.get("model_format_version")
    if version != MODEL_FORMAT_VERSION:
        raise ModelFormatError(f"{path}: model_format_version {version!r}, this battgen reads {MODEL_FORMAT_VERSION}")
    if architecture is not None and manifest.get("architecture") != architecture:
        raise ModelFormatError(
            f"{model_dir} holds a {manifest.get('architecture')!r} model, expected {architecture!r}"
        )
    if verify:
        found = model_files(model_dir)
        expected = manifest.get("files") or {}
        changed = sorted(name for name in expected if found.get(name) != expected[name])
        if changed:
            raise ModelFormatError(f"{model_dir}: file(s) missing or changed since training: {changed[:5]}")
    return manifest
