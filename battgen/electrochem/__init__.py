"""battgen.electrochem: electrode quantities computed from compositions and structures (capacity ...)."""
