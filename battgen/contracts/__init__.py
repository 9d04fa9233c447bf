"""One typed contract per ``battgen`` command, shared by the science command and its CalcJob and parser.

Each module holds a command's settings model (pydantic, ``extra="forbid"``, every field with its unit and
range), the file names it reads and writes, and its status enum. Plain pydantic and the standard library
only: ``aiida_battgen`` imports these modules, and they must never pull in torch, ASE or AiiDA.
"""
