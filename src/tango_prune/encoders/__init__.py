"""Real vision towers usable without a hub."""
