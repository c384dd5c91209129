"""Reading ``.tflite`` files without TensorFlow: one module per job.

``flatbuffer`` (the bounds-checked reader), ``model`` (tensors, operators, metadata
entries), ``metadata`` (TFLite Model Metadata and its packed files) and ``sidecar``
(what the metadata says about running the model).
"""
