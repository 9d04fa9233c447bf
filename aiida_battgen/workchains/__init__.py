"""aiida_battgen.workchains"""
