"""AiiDA data types of aiida-battgen."""

from .batch import StructureBatchData

__all__ = ["StructureBatchData"]
