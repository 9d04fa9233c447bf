"""battgen.sources"""
