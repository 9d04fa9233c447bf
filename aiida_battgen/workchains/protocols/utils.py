"""Protocols are data: one YAML per work chain with ``default_inputs``, ``default_protocol`` and
``protocols: {<name>: {description, ...}}``. Overrides are deep-merged and unknown keys are rejected.

Protocol keys mirror the work chain's port tree (a Dict port's value is a mapping of its own). A composite
chain does not restate its children's settings: its section for a child holds only what differs (overrides
of the child's protocol), and :meth:`ProtocolMixin.compose_protocol_inputs` fills the rest from the child's
own protocol (the aiida-quantumespresso ``PwRelaxWorkChain`` pattern), so that e.g. the MLIP and its force
criterion are stated once, in ``relax_base.yaml``."""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import yaml

PROTOCOL_DIR = pathlib.Path(__file__).parent


class UnknownProtocolKeyError(KeyError):
    """An override names a key the protocol does not define (typo protection)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def recursive_merge(base: dict[str, Any], overrides: dict[str, Any], path: str = "", strict: bool = True) -> dict:
    """Deep-merge ``overrides`` into a copy of ``base``; with ``strict`` an unknown key raises."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        where = f"{path}.{key}" if path else key
        if key not in merged:
            if strict:
                raise UnknownProtocolKeyError(f"unknown protocol key {where!r}; known here: {sorted(merged)}")
            merged[key] = copy.deepcopy(value)
        elif isinstance(merged[key], dict) and isinstance(value, dict) and not _is_free_mapping(key):
            merged[key] = recursive_merge(merged[key], value, where, strict)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# Mappings whose keys are data (column names, element substitutions), not protocol keys.
_FREE_MAPPINGS = {"max_values", "min_values", "equals", "conditions"}


def _is_free_mapping(key: str) -> bool:
    return key in _FREE_MAPPINGS


class ProtocolMixin:
    """Gives a work chain ``get_available_protocols``, ``get_default_protocol`` and ``get_protocol_inputs``."""

    _protocol_file: str = ""

    @classmethod
    def _load_protocol_file(cls) -> dict[str, Any]:
        with open(PROTOCOL_DIR / cls._protocol_file, encoding="utf-8") as handle:
            return yaml.safe_load(handle)

    @classmethod
    def get_default_protocol(cls) -> str:
        return cls._load_protocol_file()["default_protocol"]

    @classmethod
    def get_available_protocols(cls) -> dict[str, dict[str, str]]:
        data = cls._load_protocol_file()
        return {name: {"description": p["description"]} for name, p in data["protocols"].items()}

    @classmethod
    def get_protocol_inputs(cls, protocol: str | None = None, overrides: dict[str, Any] | None = None) -> dict:
        data = cls._load_protocol_file()
        protocol = protocol or data["default_protocol"]
        if protocol not in data["protocols"]:
            raise ValueError(f"unknown protocol {protocol!r}; available: {sorted(data['protocols'])}")
        chosen = {k: v for k, v in data["protocols"][protocol].items() if k != "description"}
        defaults = cls.compose_protocol_inputs(protocol, copy.deepcopy(data["default_inputs"]))
        inputs = recursive_merge(defaults, chosen, path=f"protocols.{protocol}")
        if overrides:
            inputs = recursive_merge(inputs, overrides)
        return inputs

    @classmethod
    def compose_protocol_inputs(cls, protocol: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """The protocol file's ``default_inputs`` with the settings this chain takes from its children's
        protocols filled in (the chosen protocol's own keys and the ``overrides`` are merged over the result, so
        what the chain states itself wins); the default takes nothing."""
        return inputs

    @classmethod
    def child_protocol(cls, child: type[ProtocolMixin], protocol: str) -> str:
        """The child's protocol of the same name, else the child's default (e.g. ``si_anode_seed004`` →
        ``balanced``)."""
        return protocol if protocol in child.get_available_protocols() else child.get_default_protocol()


def set_builder_inputs(namespace, inputs: dict[str, Any]) -> None:
    """Copy a child builder's ``_inputs(prune=True)`` into a builder namespace port by port, so nested namespaces
    keep their defaults (assigning a whole dict would validate e.g. ``metadata.options`` without ``resources``)."""
    from collections.abc import Mapping

    from aiida.engine.processes.builder import ProcessBuilderNamespace

    for key, value in inputs.items():
        target = namespace[key] if key in namespace else None
        if isinstance(value, Mapping) and isinstance(target, ProcessBuilderNamespace):
            set_builder_inputs(target, value)
        else:
            namespace[key] = value


def relax_settings(protocol: str, keys: tuple[str, ...] = ("mlip", "fmax")) -> dict[str, Any]:
    """``keys`` of ``relax.parameters`` in the relax base protocol (``relax_base.yaml``) of ``protocol`` (or its
    default): the MLIP and its force criterion (eV/Å), for chains whose commands relax with the same MLIP."""
    chosen = RelaxBaseProtocol.child_protocol(RelaxBaseProtocol, protocol)
    parameters = RelaxBaseProtocol.get_protocol_inputs(chosen)["relax"]["parameters"]
    return {key: parameters[key] for key in keys}


class RelaxBaseProtocol(ProtocolMixin):
    """MlipRelaxBaseWorkChain's protocol file, read without importing the work chain (which imports this module);
    tests/aiida/workchains checks that the two give the same inputs."""

    _protocol_file = "relax_base.yaml"
