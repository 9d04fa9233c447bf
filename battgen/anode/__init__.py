"""Anode workflows: Si-alloy channel stability across delithiation (seed 004)."""
