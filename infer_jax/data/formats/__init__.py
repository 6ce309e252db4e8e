"""The readers of the on-disk dataset formats, one module each; :mod:`infer_jax.data.sources`
picks the reader of a config's ``data.source``."""
