"""aiida_battgen.parsers"""
