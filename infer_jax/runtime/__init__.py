"""Infrastructure every stage shares; nothing here knows about INFER.

config_lib -- the config schema, its validation and derived paths (workdir, teacher dirs).
cli        -- the ``--config`` entry-point wrapper (up-front checks, one-line errors).
errors     -- InputError, the error a user can fix.
train      -- training state, optimisers, meshes and shardings, train/eval steps.
checkpoint -- Orbax checkpoints: resumable training state and finished teachers.
distributed-- multi-process start-up and checks, primary-only writes, gathering to host.
atomic     -- the one atomic file writer.
provenance -- the hardware record and the rerun command of a result.
"""
