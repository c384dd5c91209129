"""Fine-tuning for compression (QAT, pruning, distillation), run inside the TensorFlow child.

Nothing here is imported by the converter's own process: :mod:`converter.worker` imports these
modules in the child, where Keras and TensorFlow are loaded anyway.
"""
