"""Model files and bundles: the manifest, the signed bundle, keys, loading a model and smoke-testing it."""
