"""battgen: the science layer of aiida-battgen (plain Python, no AiiDA import).

Sources of structures, generators, screening filters, ML relaxation and stability analysis, each usable
from Python or from the ``battgen`` command line (``battgen <command> --config x.yaml``).
"""

__version__ = "0.1.0"
