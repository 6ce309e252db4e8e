"""infer-jax: INFER dataset distillation (inter-class feature compensators) in JAX/Flax.

Pipeline stages, each a module:
  squeeze  -- train the teacher networks on the real training set.
  (recover, relabel, evaluate build on the pieces below.)

Library pieces:
  infer_jax.models      -- Flax model zoo (NHWC, BatchNorm with running statistics).
  infer_jax.bn_stats    -- BatchNorm-input statistics capture and the BN-matching loss.
  infer_jax.data        -- data sources and grain input pipelines.
  infer_jax.checkpoint  -- Orbax checkpoints of teachers and training state.
"""

__version__ = "0.1.0"
