"""DFT post-processing in plain pymatgen: formation energies against elemental references computed with
the same settings, matching Materials Project entries, and the DFT convex hull (no AiiDA here)."""
