"""AiiDA data types of aiida-battgen."""

from .batch import StructureBatchData
from .model import ModelData

__all__ = ["ModelData", "StructureBatchData"]
