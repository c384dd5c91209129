"""Session fixtures: ssh."""
