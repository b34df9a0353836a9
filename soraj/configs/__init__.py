"""Model configs: get_config(arg) files."""
