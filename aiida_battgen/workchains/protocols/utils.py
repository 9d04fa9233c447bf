"""Protocols are data: one YAML per work chain with ``default_inputs``, ``default_protocol`` and
``protocols: {fast, balanced, stringent}``. Overrides are deep-merged and unknown keys are rejected."""

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
        inputs = recursive_merge(data["default_inputs"], chosen, path=f"protocols.{protocol}")
        if overrides:
            inputs = recursive_merge(inputs, overrides)
        return inputs
