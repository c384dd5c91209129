"""``make device-check``: the agent as a real systemd service in a Debian 12 box (systemd-nspawn),
installed and driven from the host only the way an operator would (``edge-deploy``, MQTT)."""
