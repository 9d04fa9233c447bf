"""aiida_battgen: the thin AiiDA layer of aiida-battgen (never imports torch).

Data types, calcfunctions, CalcJobs running the ``battgen`` CLI, parsers and work chains.
"""

__version__ = "0.1.0"
