"""aiida_battgen.tools"""
