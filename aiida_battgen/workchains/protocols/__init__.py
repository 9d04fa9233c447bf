"""Protocol YAML files of the work chains."""
