"""Diffusion molecular dynamics with MLIPs (seed 002): cell set-up, the chunked/restartable MD run, and the
MSD / Nernst–Einstein / Arrhenius analysis. Plain Python (ASE, pymatgen); never imports aiida."""
