"""infer-jax: INFER dataset distillation (inter-class feature compensators) in JAX/Flax.

The pipeline, in order (each stage a top-level module; ``python -m infer_jax.<module>``
where it has an entry point):

  squeeze    -- train the teacher networks on the real training set; load them (teachers).
  recover    -- optimise one compensator per subset and teacher against the BN statistics.
  relabel    -- static soft labels: the teachers' mean logits on every instance.
  synthetic  -- the on-disk format of a synthetic set (save, load, materialise, bytes).
  student    -- train a student from scratch on a set (the evaluation trainer).
  evaluate   -- the evaluation protocol: seeds, label protocols, budgets; its entry point.
  baselines  -- the comparison's other sets: Random, INFER w/o UFC, SRe2L-style.
  distill    -- the main job: squeeze -> INFER set -> comparison -> summary.json.
  report     -- summary JSON files -> docs/results.md and its figures.
  export     -- a saved set as a PNG folder (and PyTorch tensors); convert: PyTorch teachers in.

Below the stages:

  infer_jax.core     -- the pure numeric core: BN statistics and matching loss (bn_stats), the
                        budget and subsets (subsets), on-device augmentation (augment), the
                        student losses (losses). Functions of arrays, no I/O, no configs.
  infer_jax.models   -- the Flax model zoo (NHWC, BatchNorm with running statistics).
  infer_jax.data     -- dataset types and checks (types), one reader per format (formats/),
                        the reader dispatch (sources), the grain input pipeline (pipeline)
                        and a synthetic set as a pipeline source (set_source).
  infer_jax.runtime  -- infrastructure: configs and the CLI, Orbax checkpoints, training
                        state and meshes, multi-process runs, atomic writes, provenance.

docs/architecture.md draws the data flow from a config to summary.json.
"""

__version__ = "0.1.0"
