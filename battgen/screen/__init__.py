"""battgen.screen"""
