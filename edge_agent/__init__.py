"""On-device inference agent: runs verified int8 TFLite bundles and reports over MQTT.

This package is what a device installs. It must never import TensorFlow or
``converter``; keep imports light so the agent starts fast.
"""

__version__ = "0.1.0"
