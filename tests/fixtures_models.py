"""Session fixtures: models."""
