"""Offline converter: trained TensorFlow/Keras model -> verified int8 TFLite bundle.

See ``converter/README.md``. This package may import ``edge_agent``; never the other way round.
TensorFlow is only imported in the child process (``converter.worker``) and in
``converter.examples`` training functions.
"""
