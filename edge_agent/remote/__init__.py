"""Acting on requests from afar: signed commands, desired configuration and over-the-air updates."""
