# ruff: noqa: E501  (the mutations quote source lines verbatim; wrapping them would hide the code)
"""Mutation check of the test suite: does each plausible regression fail a test?

    python tests/mutants.py                 # every mutation; prints a table
    python tests/mutants.py --out tests/mutants.txt
    python tests/mutants.py kl_times_t_squared roll_u_only   # some of them

Each mutation is a named, semantic change of one piece of the package (for example "KL with a
T^2 factor"), given as an exact snippet of source and its replacement. For each one in turn
the package and the tests are copied to a temporary folder, the snippet is replaced there (the
checkout is never touched), and the tests that should notice are run against the copy. The
table names, for every mutation, the first test that failed, or SURVIVED when every test
passed: a survivor is a hole in the suite. A snippet that no longer occurs exactly once in
the source is reported as STALE, so the list cannot silently drift from the code.

It takes a while (each mutation re-runs its tests, compiles included), so it is run on demand,
not in CI. Its output, with the date and commit, is kept in tests/mutants.txt.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Mutation:
  """One semantic change: replace ``old`` (exactly one occurrence) in ``path`` by ``new``."""

  name: str
  what: str
  path: str
  old: str
  new: str
  tests: tuple[str, ...]  # pytest arguments: files, and -k expressions


MUTATIONS = [
  Mutation(
    "mixup_targets_one_minus_lam",
    "MixUp targets mixed with 1 - lam inside the student step",
    "infer_jax/student.py",
    '    images, targets, _ = losses.apply_mixup(draws["mixup"], images, targets)\n',
    '    images, mixed, lam = losses.apply_mixup(draws["mixup"], images, targets)\n    if targets is not None and draws["mixup"]:\n      mixed = (1.0 - lam) * targets + lam * targets[draws["mixup"]["perm"]]\n    targets = mixed\n',
    ("tests/test_student.py", "-k", "wired"),
  ),
  Mutation(
    "dyn_labeller_unmixed",
    "the +Dyn labeller given the un-mixed batch",
    "infer_jax/student.py",
    '    images, targets, _ = losses.apply_mixup(draws["mixup"], images, targets)\n    if label_mode == "dynamic":\n      # Labels of what the student actually sees (augmented and mixed): INFER+Dyn.\n      targets = label_fn.fn(label_variables, images)\n',
    '    unmixed = images\n    images, targets, _ = losses.apply_mixup(draws["mixup"], images, targets)\n    if label_mode == "dynamic":\n      targets = label_fn.fn(label_variables, unmixed)\n',
    ("tests/test_student.py", "-k", "wired"),
  ),
  Mutation(
    "schedule_length_ignored",
    "the student step's learning-rate schedule ignores the run's length it is given",
    "infer_jax/student.py",
    "    optimizer = tx if fixed_tx else tx(total_steps)\n",
    "    optimizer = tx if fixed_tx else tx(1000)\n",
    ("tests/test_student.py", "-k", "compiles_once"),
  ),
  Mutation(
    "schedule_length_of_one_epoch",
    "the student trained with a schedule as long as one epoch, not the whole run",
    "infer_jax/student.py",
    "  schedule_steps = jax.device_put(np.int32(total_steps), train.replicated(mesh))\n",
    "  schedule_steps = jax.device_put(np.int32(epoch_steps), train.replicated(mesh))\n",
    ("tests/test_student.py", "-k", "own_length"),
  ),
  Mutation(
    "first_bn_wrong_layer",
    "the first-BN multiplier applied to the second BN layer",
    "infer_jax/recover.py",
    "first_layer = bn_stats.bn_layer_order(model, teacher.variables, (c, *image_shape))[0]",
    "first_layer = bn_stats.bn_layer_order(model, teacher.variables, (c, *image_shape))[1]",
    ("tests/test_recover.py",),
  ),
  Mutation(
    "static_labels_on_augmented",
    "static labels computed on augmented (rolled) instead of un-augmented instances",
    "infer_jax/relabel.py",
    "    lambda rows: synthetic.materialize_rows(s, rows)[0],\n",
    "    lambda rows: np.roll(synthetic.materialize_rows(s, rows)[0], 1, axis=(1, 2)),  # MUTANT\n",
    ("tests/test_distill.py", "-k", "static_labels"),
  ),
  Mutation(
    "compensators_clipped",
    "compensators clipped during optimisation",
    "infer_jax/recover.py",
    "    params = optax.apply_updates(params, updates)\n",
    "    params = jnp.clip(optax.apply_updates(params, updates), -2.0, 2.0)\n",
    ("tests/test_recover.py", "-k", "by_hand or vmapped or sharded"),
  ),
  Mutation(
    "best_epoch_as_final",
    "the best epoch reported as the final one",
    "infer_jax/student.py",
    '  final_top1 = history[-1]["top1"]\n',
    '  final_top1 = max(h["top1"] for h in history)\n',
    ("tests/test_student.py", "-k", "hard_labels_learn"),
  ),
  Mutation(
    "bn_loss_squared_norm",
    "BN-matching loss with the squared norm",
    "infer_jax/core/bn_stats.py",
    "    weight = first_multiplier if first_layer is not None and path == tuple(first_layer) else 1.0\n",
    "    term = jnp.sum(jnp.square(flat_stats[path + ('mean',)] - flat_running[path + ('mean',)]), -1) + jnp.sum(jnp.square(flat_stats[path + ('var',)] - flat_running[path + ('var',)]), -1)  # MUTANT\n    weight = first_multiplier if first_layer is not None and path == tuple(first_layer) else 1.0\n",
    ("tests/test_bn_stats.py", "tests/test_recover.py"),
  ),
  Mutation(
    "bn_unbiased_variance",
    "unbiased instead of biased variance in the BN statistics",
    "infer_jax/core/bn_stats.py",
    "  var = jnp.mean(jnp.square(x - mean), axis=axes)\n",
    "  var = jnp.sum(jnp.square(x - mean), axis=axes) / (x.size // x.shape[-1] - 1)  # MUTANT\n",
    ("tests/test_bn_stats.py",),
  ),
  Mutation(
    "kl_without_temperature",
    "KL without the temperature",
    "infer_jax/core/losses.py",
    "  log_p_student = jax.nn.log_softmax(student_logits / temperature, axis=-1)\n  log_p_teacher = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)\n",
    "  log_p_student = jax.nn.log_softmax(student_logits, axis=-1)  # MUTANT\n  log_p_teacher = jax.nn.log_softmax(teacher_logits, axis=-1)\n",
    ("tests/test_student.py", "-k", "kl or wired"),
  ),
  Mutation(
    "kl_times_t_squared",
    "KL with a T^2 factor",
    "infer_jax/core/losses.py",
    "  return jnp.mean(kl)\n",
    "  return jnp.mean(kl) * temperature**2  # MUTANT\n",
    ("tests/test_student.py", "-k", "kl or wired"),
  ),
  Mutation(
    "roll_u_only",
    "the roll applied to u only instead of x + u",
    "infer_jax/recover.py",
    "  x = apply_subset(draws_k, base_k + params_k, cfg.augment)",
    "  x = base_k + apply_subset(draws_k, jnp.broadcast_to(params_k, base_k.shape), cfg.augment)",
    ("tests/test_recover.py", "-k", "roll or vmapped"),
  ),
  Mutation(
    "static_labels_summed",
    "static labels summed instead of averaged over teachers",
    "infer_jax/relabel.py",
    "    out[start : start + n] = total / len(teachers)\n",
    "    out[start : start + n] = total  # MUTANT\n",
    ("tests/test_recover.py", "tests/test_distill.py", "-k", "static_labels"),
  ),
  Mutation(
    "same_steps_wrong_set_size",
    "same-steps epochs computed from the wrong set size",
    "infer_jax/evaluate.py",
    "  return epochs_for_steps(steps, num_instances, batch_size)\n",
    "  return epochs_for_steps(steps, reference_instances, batch_size)  # MUTANT\n",
    ("tests/test_distill.py", "-k", "end_to_end"),
  ),
  Mutation(
    "resume_restarts_schedule",
    "a resumed recover restarting its learning-rate schedule",
    "infer_jax/recover.py",
    '      params, opt_state = place(state["params"]), place(state["opt_state"])',
    '      params, opt_state = place(state["params"]), place(tx.init(state["params"]))',
    ("tests/test_recover.py", "-k", "resume"),
  ),
  Mutation(
    "bytes_omit_labels",
    "the byte count omitting labels",
    "infer_jax/synthetic.py",
    '    "total": images + compensators + labels,\n',
    '    "total": images + compensators,  # MUTANT\n',
    ("tests/test_synthetic.py", "tests/test_evaluate.py", "-k", "budget or bytes or storage"),
  ),
  Mutation(
    "lam_uniform",
    "MixUp lam drawn uniformly instead of from Beta(alpha, alpha)",
    "infer_jax/core/losses.py",
    "  lam = jax.random.beta(lam_key, alpha, alpha, dtype=jnp.float32)\n",
    "  lam = jax.random.uniform(lam_key, dtype=jnp.float32)  # MUTANT\n",
    ("tests/test_student.py", "-k", "mixup"),
  ),
  Mutation(
    "crop_offset_fixed",
    "the student's random crop offsets fixed at the centre",
    "infer_jax/core/augment.py",
    '    draws["top"], draws["left"] = jax.random.randint(crop_key, (2,), 0, 2 * padding + 1)\n',
    '    draws["top"] = draws["left"] = jnp.asarray(padding, jnp.int32)\n',
    ("tests/test_student.py", "-k", "augment_batch"),
  ),
  Mutation(
    "chunk_draws_from_zero",
    "every chunk of subsets given the first chunk's augmentation draws",
    "infer_jax/recover.py",
    "        lambda a: jax.lax.dynamic_slice_in_dim(a, first_subset, params.shape[0]), every\n",
    "        lambda a: jax.lax.dynamic_slice_in_dim(a, 0 * first_subset, params.shape[0]), every\n",
    ("tests/test_recover_chunks.py", "-k", "single_pass"),
  ),
  Mutation(
    "chunk_noise_from_zero",
    "every chunk of SRe2L-style images starting from the first chunk's noise",
    "infer_jax/recover.py",
    "    init = init[chunk.first : chunk.first + k]  # the chunk's rows of a single pass's start\n",
    "    init = init[:k]  # MUTANT\n",
    ("tests/test_recover_chunks.py", "-k", "noise"),
  ),
  Mutation(
    "recover_dtype_ignored",
    "recover.dtype='bfloat16' computing in float32",
    "infer_jax/recover.py",
    '  if cfg.dtype == "float32":\n    return teacher.model\n',
    "  if True:  # MUTANT\n    return teacher.model\n",
    ("tests/test_recover_chunks.py", "-k", "bfloat16"),
  ),
  Mutation(
    "plan_ignores_teacher_bytes",
    "the automatic layout ignoring the teacher's own bytes",
    "infer_jax/recover.py",
    "    return fixed + -(-chunk // (devices // i)) * -(-c // i) * per_image <= budget\n",
    "    return -(-chunk // (devices // i)) * -(-c // i) * per_image <= budget\n",
    ("tests/test_recover_chunks.py", "-k", "plan_split"),
  ),
  Mutation(
    "sweep_scales_configured_epochs",
    "the budget sweep scaling student.epochs instead of the row's own (same_steps) epochs",
    "infer_jax/distill.py",
    '      epochs = max(1, round(row["epochs"] * mult))\n',
    "      epochs = max(1, round(scfg.epochs * mult))  # MUTANT\n",
    ("tests/test_distill.py", "-k", "budget_sweep_trains"),
  ),
]


def _first_failure(stdout: str) -> str | None:
  """The node id of the first FAILED/ERROR line of ``pytest -q -rfE`` output, if any."""
  for line in stdout.splitlines():
    if line.startswith(("FAILED ", "ERROR ")):
      return line.split()[1]
  return None


def run_mutation(m: Mutation, root: pathlib.Path, timeout: float) -> tuple[str, float]:
  """Applies ``m`` in the copy at ``root``, runs its tests there, restores the file.

  Returns:
    (verdict, seconds): the failing test's node id, "SURVIVED", "STALE (...)" or "TIMEOUT".
  """
  target = root / m.path
  original = target.read_text()
  count = original.count(m.old)
  if count != 1:
    return f"STALE (snippet found {count} times in {m.path})", 0.0
  target.write_text(original.replace(m.old, m.new))
  env = {**os.environ, "PYTHONPATH": str(root), "CI": "true"}
  start = time.perf_counter()
  try:
    r = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-x", "-rfE", "-p", "no:cacheprovider", *m.tests],
      cwd=root,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
    )
  except subprocess.TimeoutExpired:
    return "TIMEOUT", time.perf_counter() - start
  finally:
    target.write_text(original)
  seconds = time.perf_counter() - start
  if r.returncode == 0:
    return "SURVIVED", seconds
  failed = _first_failure(r.stdout)
  if failed is None:  # e.g. a collection error: report the tail so it can be read.
    failed = "ERROR: " + " | ".join(r.stdout.strip().splitlines()[-2:])
  return failed, seconds


def _commit() -> str:
  r = subprocess.run(
    ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
  )
  dirty = subprocess.run(
    ["git", "status", "--porcelain", "infer_jax", "tests"], cwd=REPO, capture_output=True, text=True
  ).stdout.strip()
  return (r.stdout.strip() or "unknown") + ("-dirty" if dirty else "")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
  parser.add_argument("--out", help="also write the table to this file")
  parser.add_argument("--timeout", type=float, default=1800, help="seconds per mutation")
  parser.add_argument("--list", action="store_true", help="list the mutations and exit")
  args = parser.parse_args(argv)
  by_name = {m.name: m for m in MUTATIONS}
  if args.list:
    for m in MUTATIONS:
      print(f"{m.name:32s} {m.what}")
    return 0
  unknown = [n for n in args.names if n not in by_name]
  if unknown:
    print(f"unknown mutation(s) {unknown}; `python tests/mutants.py --list` names them")
    return 2
  chosen = [by_name[n] for n in args.names] or MUTATIONS
  header = [
    f"# Mutation check, {datetime.date.today().isoformat()}, commit {_commit()}, "
    f"{platform.machine()} {os.cpu_count()} cores",
    "# python tests/mutants.py" + "".join(f" {n}" for n in args.names),
    "",
    f"{'mutation':32s} {'seconds':>8s}  caught by",
  ]
  print("\n".join(header), flush=True)
  lines = list(header)
  survivors = 0
  with tempfile.TemporaryDirectory(prefix="infer_jax_mutants_") as tmp:
    root = pathlib.Path(tmp) / "checkout"
    for d in ("infer_jax", "tests", "configs"):
      shutil.copytree(REPO / d, root / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root)
    # The real-data tests read ../shared/data beside the checkout: the copy sees the same one.
    if (REPO.parent / "shared").exists():
      (root.parent / "shared").symlink_to(REPO.parent / "shared")
    for m in chosen:
      verdict, seconds = run_mutation(m, root, args.timeout)
      survivors += not (verdict.startswith("tests/"))
      line = f"{m.name:32s} {seconds:8.0f}  {verdict}"
      print(line, flush=True)
      lines.append(line)
  summary = f"\n{len(chosen) - survivors} of {len(chosen)} mutations caught"
  print(summary)
  lines.append(summary)
  if args.out:
    pathlib.Path(args.out).write_text("\n".join(lines) + "\n")
  return 1 if survivors else 0


if __name__ == "__main__":
  sys.exit(main())
