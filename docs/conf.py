"""Sphinx configuration of the aiida-battgen documentation site (built by .ci/docs.sh with -W: warnings fail)."""

project = "aiida-battgen"
author = "aiida-battgen developers"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "aiida.sphinxext"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "templates"]
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "none"  # signatures stay readable; units and meanings are in the docstrings
html_theme = "alabaster"
nitpicky = False
