"""aiida_battgen.calculations.functions"""
