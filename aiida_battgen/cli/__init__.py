"""aiida_battgen.cli"""
