"""Machine-learned interatomic potentials as ASE calculators, with what is needed for provenance.

Every loader returns ``(ase_calculator, MlipInfo)``: the info records the package version, the model
name, the sha256 of the weights file actually read from disk and the elements the model was trained on
(rows with other elements are flagged instead of relaxed). Loaded models are cached per process, so a
batch, or several batches in one process, pay the loading cost once.

Loaders are registered as entry points in the ``battgen.mlips`` group (``battgen.chgnet``,
``battgen.sevennet`` (SevenNet-0), ``battgen.sevennet_l3i5``, ``battgen.m3gnet``); :func:`load_mlip` resolves
a short or full name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from pymatgen.core import Element

from battgen.contracts.mlip import MLIP_ENTRY_POINT_GROUP

DEFAULT_CHGNET_MODEL = "0.3.0"
DEFAULT_SEVENNET_MODEL = "7net-0"
SEVENNET_L3I5_MODEL = "7net-l3i5"  # shipped in the sevenn wheel; Matbench Discovery F1 0.760 (SevenNet-0: 0.724)
DEFAULT_M3GNET_MODEL = "M3GNet-MP-2021.2.8-PES"

# (loader name, its arguments) -> (calculator, info); models are large, load each once per process.
_MODEL_CACHE: dict[tuple[str, tuple[tuple[str, Any], ...]], tuple[Any, MlipInfo]] = {}


@dataclass(frozen=True)
class MlipInfo:
    """What identifies the potential used for a result."""

    name: str  # short name of the MLIP family: chgnet, sevennet, m3gnet
    package: str  # distribution providing it
    package_version: str
    model_name: str  # pretrained model name, or the local path it was loaded from
    weights_path: str
    weights_sha256: str
    supported_elements: frozenset[str]

    def unsupported_elements(self, symbols: set[str] | list[str]) -> list[str]:
        """Elements of ``symbols`` the model was not trained on, sorted."""
        return sorted(set(symbols) - self.supported_elements)

    def as_dict(self) -> dict[str, Any]:
        """JSON/YAML-safe form (elements as a sorted list)."""
        data = asdict(self)
        data["supported_elements"] = sorted(self.supported_elements)
        return data


def sha256_of_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _symbols_of_atomic_numbers(numbers) -> frozenset[str]:
    return frozenset(Element.from_Z(int(z)).symbol for z in numbers)


def _cached(key_name: str, loader: Callable[..., tuple[Any, MlipInfo]], **kwargs: Any) -> tuple[Any, MlipInfo]:
    key = (key_name, tuple(sorted(kwargs.items())))
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = loader(**kwargs)
    return _MODEL_CACHE[key]


def clear_model_cache() -> None:
    _MODEL_CACHE.clear()


# --- CHGNet ---------------------------------------------------------------------------------------
def _pretrained_chgnet_file(model_name: str) -> Path:
    import chgnet

    candidates = sorted((Path(chgnet.__file__).parent / "pretrained" / model_name).glob("*.pth.tar"))
    if not candidates:
        raise FileNotFoundError(f"no pretrained CHGNet weights for model {model_name!r} in the chgnet package")
    return candidates[0]


def _load_chgnet_uncached(model_path: str | None, device: str) -> tuple[Any, MlipInfo]:
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    if model_path is None:
        weights = _pretrained_chgnet_file(DEFAULT_CHGNET_MODEL)
        model = CHGNet.load(model_name=DEFAULT_CHGNET_MODEL, use_device=device, verbose=False)
        model_name = f"CHGNet-{DEFAULT_CHGNET_MODEL}"
    else:
        weights = Path(model_path).expanduser().resolve()
        if not weights.is_file():
            raise FileNotFoundError(f"CHGNet weights file {weights} does not exist")
        model = CHGNet.from_file(str(weights)).to(device)
        model_name = str(weights)
    # The atom embedding has one row per atomic number 1..N: heavier elements are outside the model.
    n_elements = model.atom_embedding.embedding.num_embeddings
    calculator = CHGNetCalculator(model=model, use_device=device)
    info = MlipInfo(
        name="chgnet",
        package="chgnet",
        package_version=metadata.version("chgnet"),
        model_name=model_name,
        weights_path=str(weights),
        weights_sha256=sha256_of_file(weights),
        supported_elements=_symbols_of_atomic_numbers(range(1, n_elements + 1)),
    )
    return calculator, info


def load_chgnet(model_path: str | None = None, device: str = "cpu") -> tuple[Any, MlipInfo]:
    """CHGNet (pretrained 0.3.0 shipped in the wheel, or a fine-tuned checkpoint file) as an ASE calculator."""
    return _cached("chgnet", _load_chgnet_uncached, model_path=model_path, device=device)


# --- SevenNet -------------------------------------------------------------------------------------
def _load_sevennet_uncached(model: str, device: str, modal: str | None) -> tuple[Any, MlipInfo]:
    from sevenn.calculator import SevenNetCalculator
    from sevenn.util import pretrained_name_to_path

    local = Path(model).expanduser()
    weights = local.resolve() if local.is_file() else Path(pretrained_name_to_path(model))
    kwargs = {"modal": modal} if modal else {}
    calculator = SevenNetCalculator(model=str(weights) if local.is_file() else model, device=device, **kwargs)
    info = MlipInfo(
        name="sevennet",
        package="sevenn",
        package_version=metadata.version("sevenn"),
        model_name=model,
        weights_path=str(weights),
        weights_sha256=sha256_of_file(weights),
        supported_elements=_symbols_of_atomic_numbers(calculator.type_map),
    )
    return calculator, info


def load_sevennet(model: str = DEFAULT_SEVENNET_MODEL, device: str = "cpu", modal: str | None = None):
    """SevenNet by pretrained name (``7net-0``, ``7net-l3i5``; ``7net-mf-0`` needs ``modal``) or checkpoint path."""
    return _cached("sevennet", _load_sevennet_uncached, model=model, device=device, modal=modal)


def load_sevennet_l3i5(model: str = SEVENNET_L3I5_MODEL, device: str = "cpu", modal: str | None = None):
    """SevenNet-l3i5 by name (``mlip: sevennet_l3i5``); ``model`` may point at a fine-tuned checkpoint of it."""
    return load_sevennet(model=model, device=device, modal=modal)


# --- M3GNet (matgl) -------------------------------------------------------------------------------
def _load_m3gnet_uncached(model: str, device: str) -> tuple[Any, MlipInfo]:
    import matgl
    from matgl.ext.ase import PESCalculator
    from matgl.utils.io import _get_file_paths

    local = Path(model).expanduser()
    # A local directory saved by matgl, or a pretrained name fetched (and cached) from the hub.
    files = _get_file_paths(local.resolve() if local.is_dir() else Path(model), str_path=model)
    potential = matgl.load_model(local.resolve() if local.is_dir() else model)
    potential = potential.to(device)
    weights = Path(files["model.pt"])
    info = MlipInfo(
        name="m3gnet",
        package="matgl",
        package_version=metadata.version("matgl"),
        model_name=model,
        weights_path=str(weights),
        weights_sha256=sha256_of_file(weights),
        supported_elements=frozenset(potential.model.element_types),
    )
    return PESCalculator(potential, stress_unit="eV/A3"), info


def load_m3gnet(model: str = DEFAULT_M3GNET_MODEL, device: str = "cpu") -> tuple[Any, MlipInfo]:
    """An M3GNet-style matgl potential by hub name (needs internet) or from a directory saved by matgl."""
    return _cached("m3gnet", _load_m3gnet_uncached, model=str(model), device=device)


# --- resolution by name ---------------------------------------------------------------------------
def available_mlips() -> dict[str, metadata.EntryPoint]:
    """Registered loaders by full entry-point name (``battgen.chgnet`` ...)."""
    return {ep.name: ep for ep in metadata.entry_points(group=MLIP_ENTRY_POINT_GROUP)}


def mlip_entry_point_name(name: str) -> str:
    """``chgnet`` or ``battgen.chgnet`` -> ``battgen.chgnet``; raises KeyError listing the known names."""
    registered = available_mlips()
    full = name if name.startswith("battgen.") else f"battgen.{name}"
    if full not in registered:
        known = ", ".join(sorted(n.removeprefix("battgen.") for n in registered))
        raise KeyError(f"unknown MLIP {name!r}; available: {known}")
    return full


def load_mlip(name: str, **kwargs: Any) -> tuple[Any, MlipInfo]:
    """Load an MLIP by short (``chgnet``) or entry-point (``battgen.chgnet``) name; kwargs go to its loader."""
    return available_mlips()[mlip_entry_point_name(name)].load()(**kwargs)
