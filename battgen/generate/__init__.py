"""battgen.generate"""
