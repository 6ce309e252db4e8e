"""The data layer: dataset types and checks (``types``), one reader per on-disk format
(``formats``), the reader dispatch (``sources``), grain input pipelines (``pipeline``) and a
synthetic set as a pipeline source (``set_source``).

Example::

  >>> from infer_jax.data import pipeline, sources
  >>> dataset = sources.load_dataset("digits")
  >>> batches = pipeline.train_iterator(dataset.train, batch_size=64, seed=0, num_epochs=1)
"""
