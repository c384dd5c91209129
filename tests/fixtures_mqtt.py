"""Session fixtures: mqtt."""
