"""battgen.mlip"""
