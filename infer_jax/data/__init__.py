"""The data layer: dataset sources (``sources``) and grain input pipelines (``pipeline``).

Example::

  >>> from infer_jax.data import pipeline, sources
  >>> dataset = sources.load_dataset("digits")
  >>> batches = pipeline.train_iterator(dataset.train, batch_size=64, seed=0, num_epochs=1)
"""
