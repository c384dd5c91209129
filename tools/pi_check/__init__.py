"""``make pi-check``: the device install and its results on an emulated Raspberry Pi (arm64).

Builds a Debian 12 arm64 userland (what Raspberry Pi OS Bookworm 64-bit is), installs the
project from aarch64 wheels the way a Pi user would and compares its results, frame by
frame, with the host's. docs/raspberry-pi.md explains the set-up and the figures.
"""
