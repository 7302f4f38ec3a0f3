"""Plugins that plug tango-prune into other tools (each imports its tool only inside its own module)."""
