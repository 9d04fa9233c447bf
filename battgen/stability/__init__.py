"""battgen.stability"""
