"""Insertion / adsorption potentials of working ions in the channels of a host (seed 001 §2.1, §3.1)."""
