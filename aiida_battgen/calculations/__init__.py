"""aiida_battgen.calculations"""
