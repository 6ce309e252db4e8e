r"""Turn comparison results (the distill job's ``summary.json``) into a Markdown report.

    python -m infer_jax.report docs/results/*.json --out docs/results.md

For every result file: the setting (dataset, ipc, K, M, teachers with their own test
accuracy, student, seeds, steps), the comparison table (final-epoch top-1 mean ± sample std,
the best epoch labelled as test-selected where it was tracked, stored bytes split into images
/ compensators / labels / teachers, compression ratio, student wall time), the wall time of
each stage, the exact command that reruns each row, and plain statements of where INFER
beats each baseline and where it does not. A summary whose rows were trained under both
protocols (``same_steps`` and ``same_epochs``, docs/protocol.md) gets a side-by-side table and
one full table per protocol; rows written before protocols were recorded are ``same_steps``
rows. Every row shows DD-Ranking's IOR, HLR and LRS (computed here when an older summary lacks
them). Figures (PNG, beside the report under ``figures/``): top-1 against compression ratio
for all settings (the paper's Figure 1); learning curves of the rows that recorded one; the
within-class feature similarity of real, INFER and SRe2L-style instances (the paper's Figure
4a) where the summary holds it; and, when a setting's INFER set is still in its workdir, a
grid of compensators and compensated instances (the paper's Figures 6-7).

Everything in the report is generated from the JSON files: rerun this command after any
row changes; never edit the output by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from infer_jax import synthetic
from infer_jax.core import metrics
from infer_jax.runtime import atomic, config_lib
from infer_jax.runtime.errors import InputError, guarded

# Methods compared against INFER in the generated statements, by row key.
_BASELINES = ("random_hard", "random", "infer_wo_ufc", "sre2l")
# Which rows each row is stated against: INFER and +Dyn against the baselines (+Dyn also
# against INFER), and the small-storage INFER set against float32 INFER, the comparison that
# decides whether uint8 compensators and float16 labels can be the default (docs/protocol.md),
# and against Random with the same labels, the byte-matched comparison (its bytes are about
# Random's, where float32 INFER stores 1.8x them).
_COMPARED = {
  "infer": _BASELINES,
  "infer_dyn": (*_BASELINES, "infer"),
  "infer_uint8": ("infer", "random"),
  "infer_uint8_hard": ("infer_hard", "random_hard"),
}


# The stage-time key of the run that wrote the summary (infer_jax.distill); the other stage
# times accumulate over resumed runs.
_TOTAL_STAGE = "total (this run)"

# What every row of a summary needs for the report's tables and figures.
_ROW_KEYS = {
  "key": str,
  "method": str,
  "labels": str,
  "final_top1_mean": (int, float),
  "final_top1_std": (int, float),
  "bytes": dict,
  "seconds": list,
}


def _check_rows(path: str, rows: Any) -> None:
  """InputError naming the first malformed row of a summary (an edited or truncated file)."""
  if not isinstance(rows, list):
    raise InputError(f"{path}: 'rows' is {type(rows).__name__}, not a list of result rows.")
  for i, row in enumerate(rows):
    if not isinstance(row, dict):
      raise InputError(f"{path}: row {i} is {type(row).__name__}, not an object.")
    bad = [k for k, kind in _ROW_KEYS.items() if k not in row or not isinstance(row[k], kind)] + [
      k for k in ("total", "compression_ratio") if k not in row.get("bytes", {})
    ]
    if bad:
      raise InputError(
        f"{path}: row {i} ({row.get('method', row.get('key', '?'))}) lacks or has malformed "
        f"{', '.join(bad)}. Restore the file as distill wrote it, or rerun "
        f"`{row.get('command') or 'python -m infer_jax.distill ...'}` to recompute that row."
      )


def load_results(paths: Sequence[str]) -> list[dict[str, Any]]:
  """Reads distill summaries; each gets ``'_path'``. Raises InputError on unusable files."""
  out = []
  for path in paths:
    try:
      with open(path) as f:
        summary = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise InputError(f"cannot read results file {path}: {e}") from e
    missing = [k for k in ("dataset", "ipc", "rows", "teachers", "config") if k not in summary]
    if missing:
      raise InputError(
        f"{path} is not a distill summary (missing {missing}); give the summary.json files "
        "written by python -m infer_jax.distill."
      )
    _check_rows(path, summary["rows"])
    for row in summary["rows"]:
      row.setdefault("protocol", metrics.row_protocol(row))
    if any(k not in row for row in summary["rows"] for k in ("ior", "hlr", "lrs")):
      metrics.dd_ranking(summary["rows"])
    summary["_path"] = path
    out.append(summary)
  return out


def _pct(x: float | None) -> str:
  return "–" if x is None else f"{100 * x:.2f}"


def _top1(row: dict[str, Any]) -> str:
  n = len(row.get("final_top1") or row.get("seeds") or [None, None])
  if n == 1:  # one seed has no spread: "± 0.00" would claim a measured std of zero
    return f"{_pct(row['final_top1_mean'])} (n = 1)"
  return f"{_pct(row['final_top1_mean'])} ± {_pct(row['final_top1_std'])}"


def _count(n: Any) -> str:
  """An integer count with thousands separators (``2,000``), or '–' where it is missing."""
  return "–" if n is None else f"{int(n):,}"


def _seconds(s: float) -> str:
  s = float(s)
  return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


def title(summary: dict[str, Any]) -> str:
  """Section title of a setting, e.g. ``'cifar10-jpegq75, ipc 10'``."""
  return f"{summary['dataset']['name']}, ipc {summary['ipc']}"


def chance(summary: dict[str, Any]) -> float:
  """Top-1 of guessing uniformly: ``1 / num_classes`` (a fraction)."""
  return 1.0 / summary["dataset"]["num_classes"]


def near_chance(row: dict[str, Any], summary: dict[str, Any]) -> bool:
  """Whether a row's mean top-1 is below twice chance: the student has learnt next to
  nothing, so its differences from other such rows rank nothing."""
  return row["final_top1_mean"] < 2 * chance(summary)


def protocol_groups(summary: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
  """``[(protocol, rows)]`` of a summary, in the order of the protocols' first rows."""
  groups: dict[str, list[dict[str, Any]]] = {}
  for r in summary["rows"]:
    groups.setdefault(metrics.row_protocol(r), []).append(r)
  return list(groups.items())


_PROTOCOL_TITLES = {
  "same_steps": "same_steps (compute-matched: every row about the INFER set's steps)",
  "same_epochs": "same_epochs (the paper's: every row the same epochs over its own set)",
}


def _signed(x: float | None) -> str:
  return "–" if x is None else f"{100 * x:+.2f}"


def comparisons(summary: dict[str, Any]) -> list[str]:
  """Plain statements of INFER and INFER+Dyn against each baseline present, and of the
  uint8-compensator INFER set against float32 INFER and against Random at about its bytes
  (``_COMPARED``).

  A difference is called a win or a loss only when it exceeds the larger of the two sample
  standard deviations; otherwise the two are "within noise". Two rows that are both near
  chance (below twice ``1 / num_classes``) are never ranked.
  """
  rows = {r["key"]: r for r in summary["rows"]}
  lines = []
  if rows and all(near_chance(r, summary) for r in rows.values()):
    lines.append(
      f"**Every method is near chance here** (chance is {_pct(chance(summary))}%): at this "
      "budget no student learnt enough for these rows to rank the methods."
    )
  for key, against in _COMPARED.items():
    if key not in rows:
      continue
    ours = rows[key]
    for other_key in against:
      if other_key not in rows:
        continue
      other = rows[other_key]
      diff = ours["final_top1_mean"] - other["final_top1_mean"]
      noise = max(ours["final_top1_std"], other["final_top1_std"])
      if near_chance(ours, summary) and near_chance(other, summary):
        verdict = f"{ours['method']} and {other['method']} are both near chance (not ranked)"
      elif abs(diff) <= noise:
        verdict = f"{ours['method']} within noise of {other['method']}"
      elif diff > 0:
        verdict = f"{ours['method']} beats {other['method']}"
      else:
        verdict = f"{ours['method']} **loses to** {other['method']}"
      lines.append(
        f"{verdict}: {_top1(ours)} vs {_top1(other)} "
        f"({100 * diff:+.2f} points; stored bytes {ours['bytes']['total']:,} vs "
        f"{other['bytes']['total']:,})."
      )
  return lines


def _reductions(summary: dict[str, Any]) -> list[str]:
  """The settings that differ from the paper's recipe, read from the run's config."""
  c = summary["config"]
  teachers = ", ".join(
    f"{t['architecture']} (width {t.get('width')}, {t.get('epochs')} epochs)"
    for t in summary["teachers"]
  )
  return [
    f"teachers: {teachers}",
    f"recover: {c['recover']['iterations']} iterations, lr {c['recover']['lr']}, "
    f"augment {c['recover']['augment']}",
    f"student: {c['student']['arch']} width {c['student']['width']}, "
    f"{c['student']['epochs']} epochs on the INFER set, batch {c['student']['batch_size']}, "
    f"{c['student']['optimizer']} lr {c['student']['lr']}",
    f"data: {c['data']['source']} {c['data']['path']} (name {c['data']['name'] or 'default'})",
  ]


def _comparison_table(summary: dict[str, Any]) -> list[str]:
  """The comparison table of one protocol's rows (``summary['rows']``)."""
  out = [
    "| method | labels | top-1 % (final epoch, mean ± std) | best epoch % (test-selected) "
    "| IOR | HLR | LRS | instances | images B | compensators B | labels B | teachers B "
    "| total B | ratio | epochs | steps | student time (per seed) |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in summary["rows"]:
    b = r["bytes"]
    best = "–" if r.get("best_top1_mean") is None else _pct(r["best_top1_mean"])
    per_seed = ", ".join(_seconds(x) for x in r["seconds"])
    out.append(
      f"| {r['method']} | {r['labels']} | {_top1(r)} | {best} | {_signed(r.get('ior'))} "
      f"| {_signed(r.get('hlr'))} | {_pct(r.get('lrs'))} | {r['instances']:,} "
      f"| {b['images']:,} | {b['compensators']:,} | {b['labels']:,} | {b.get('teachers', 0):,} "
      f"| {b['total']:,} | {b['compression_ratio']:.5f} | {r.get('epochs', '–')} "
      f"| {r['steps']:,} | {per_seed} |"
    )
  return out


def _side_by_side(groups: list[tuple[str, list[dict[str, Any]]]]) -> list[str]:
  """One line per method: its top-1 and epochs × steps under each protocol."""
  names = [p for p, _ in groups]
  out = [
    "| method | labels | "
    + " | ".join(f"{p}: top-1 % | {p}: epochs × steps" for p in names)
    + " |",
    "|---|---|" + "---|---|" * len(names),
  ]
  keys: list[str] = []
  for _, rows in groups:
    keys += [r["key"] for r in rows if r["key"] not in keys]
  by = {(metrics.row_protocol(r), r["key"]): r for _, rows in groups for r in rows}
  for key in keys:
    first = next(by[p, key] for p in names if (p, key) in by)
    cells = []
    for p in names:
      r = by.get((p, key))
      if r is None:
        cells += ["–", "–"]
      else:
        cells += [_top1(r), f"{_count(r.get('epochs'))} × {r['steps']:,}"]
    out.append(f"| {first['method']} | {first['labels']} | " + " | ".join(cells) + " |")
  return out


def _sweep_table(summary: dict[str, Any]) -> list[str]:
  """Lines of the budget-sweep table (docs/protocol.md), or [] when the summary has none."""
  by_method = metrics.sweep_by_method(summary.get("budget_sweep") or [])
  if not by_method:
    return []
  out = [
    "",
    "Is the budget converged? Final top-1 of one student (first seed) per budget, the rows' "
    "own budget marked *, and the change from each budget to the next (docs/protocol.md):",
    "",
    "| method | budget (steps): final top-1 % | change to the next budget (points) |",
    "|---|---|---|",
  ]
  for method, points in by_method.items():
    cells = ", ".join(
      f"{p['steps']:,}{'*' if p.get('multiplier') == 1 else ''}: {_pct(p['final_top1'])}"
      for p in points
    )
    changes = ", ".join(f"{a:,} → {b:,}: {_signed(d)}" for a, b, d in metrics.sweep_changes(points))
    out.append(f"| {method} | {cells} | {changes or '–'} |")
  return out


def setting_markdown(
  summary: dict[str, Any], figures: dict[str, str], extra: dict[str, list[str]] | None = None
) -> str:
  """The Markdown section of one setting (one results file); ``figures`` maps setting titles
  to the compensator grid, ``extra`` to further figure lines (curves, feature similarity)."""
  d = summary["dataset"]
  out = [f"## {title(summary)}", ""]
  out.append(
    f"{d['num_classes']} classes, {d['num_train']:,} training / {d['num_test']:,} test images "
    f"of {'x'.join(map(str, d['image_shape']))}; K = {summary['K']} subsets, "
    f"M = {summary['M']} teachers; evaluation seeds {summary['seeds']}. "
    f"Results file: `{summary['_path']}`."
  )
  if not summary.get("complete", True):
    out += ["", "**Incomplete: the run that wrote this file had not finished all rows.**"]
  out += [
    "",
    "| teacher | width | epochs | training time | test top-1 % |",
    "|---|---|---|---|---|",
  ]
  for t in summary["teachers"]:
    seconds = t.get("train_seconds")
    out.append(
      f"| {t['architecture']} | {t.get('width')} | {t.get('epochs') or '–'} "
      f"| {'–' if seconds is None else _seconds(seconds)} | {_pct(t['test_top1'])} |"
    )
  groups = protocol_groups(summary)
  if len(groups) > 1:
    out += ["", "Both protocols side by side (docs/protocol.md):", ""]
    out += _side_by_side(groups)
  for protocol, rows in groups:
    part = {**summary, "rows": rows}
    out += ["", f"Protocol **{_PROTOCOL_TITLES.get(protocol, protocol)}**:", ""]
    out += _comparison_table(part)
    out += ["", f"Where INFER wins and where it does not ({protocol}):", ""]
    out += [f"- {line}" for line in comparisons(part)] or ["- (no INFER row)"]
  out += _sweep_table(summary)
  out += [
    "",
    "IOR: top-1 minus Random's (hard-label rows: Random with hard labels) under the same "
    "protocol; HLR: the full-data hard-label top-1 minus the set's own hard-label top-1; LRS: "
    "DD-Ranking's label-robust score from them (docs/protocol.md); points, '–' where a needed "
    "row is absent.",
  ]
  # Summaries written by a resumed run before distill dropped the earlier run's total hold
  # that key among the stages (the committed ipc 10 one does): print it last.
  stages = sorted(summary["stage_seconds"].items(), key=lambda kv: kv[0] == _TOTAL_STAGE)
  out += ["", "Stage wall time: " + ", ".join(f"{k} {_seconds(v)}" for k, v in stages) + "."]
  out += ["", "Settings (reductions from the paper's recipe are stated in the config file):", ""]
  out += [f"- {line}" for line in _reductions(summary)]
  out += ["", "Commands (each reruns its row; rows already in the results file are kept):", ""]
  out.append("```")
  out.append(summary["command"])
  out += [r["command"] for r in summary["rows"]]
  out.append("```")
  for line in (extra or {}).get(title(summary), []):
    out += ["", line]
  if title(summary) in figures:
    out += ["", f"![compensators and compensated instances]({figures[title(summary)]})"]
  return "\n".join(out)


def plot_curves(summary: dict[str, Any], path: str) -> bool:
  """Learning curves (test top-1 against optimisation steps, first seed) of the rows that
  recorded one, solid same_steps, dashed same_epochs; and the budget sweep's final top-1 per
  run length as crosses. Returns False (nothing written) when there is neither."""
  rows = [r for r in summary["rows"] if r.get("curve")]
  if not rows and not summary.get("budget_sweep"):
    return False
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 3.8))
  colours: dict[str, Any] = {}
  for r in rows:
    steps, top1 = zip(*r["curve"], strict=True)
    protocol = metrics.row_protocol(r)
    line = ax.plot(
      steps,
      [100 * t for t in top1],
      linestyle="--" if protocol == "same_epochs" else "-",
      marker=".",
      color=colours.get(r["key"]),
      label=f"{r['method']} ({protocol}, seed {r['seeds'][0]})",
    )[0]
    colours.setdefault(r["key"], line.get_color())
  for method, points in metrics.sweep_by_method(summary.get("budget_sweep") or []).items():
    ax.plot(
      [p["steps"] for p in points],
      [100 * p["final_top1"] for p in points],
      linestyle="none",
      marker="x",
      markersize=7,
      color=colours.get(points[0]["key"]),
      label=f"{method}: final top-1 of a run of that length",
    )
  ax.axhline(100 * chance(summary), color="grey", linestyle=":", linewidth=1)
  ax.set_xlabel("optimisation steps")
  ax.set_ylabel("test top-1 %")
  ax.set_title(f"{title(summary)}: learning curves", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  _save_figure(fig, path)
  plt.close(fig)
  return True


def plot_feature_similarity(summary: dict[str, Any], path: str) -> bool:
  """Bars: mean within-class cosine similarity of each teacher's penultimate features, per
  set kind (real, INFER, SRe2L-style; the paper's Figure 4a). Returns False (nothing written)
  when the summary holds none."""
  data = summary.get("feature_similarity")
  if not data:
    return False
  plt = _pyplot()
  teachers = list(data)
  kinds = [k for k in ("real", "infer", "sre2l") if any(k in data[t] for t in teachers)]
  names = {"real": "real images", "infer": "INFER instances", "sre2l": "SRe2L-style"}
  fig, ax = plt.subplots(figsize=(1.2 + 1.6 * len(teachers), 3.6))
  width = 0.8 / max(1, len(kinds))
  for j, kind in enumerate(kinds):
    values = [data[t].get(kind, {}).get("mean", np.nan) for t in teachers]
    ax.bar(np.arange(len(teachers)) + j * width, values, width, label=names.get(kind, kind))
  ax.set_xticks(np.arange(len(teachers)) + width * (len(kinds) - 1) / 2)
  ax.set_xticklabels(teachers, fontsize=7, rotation=15)
  ax.set_ylabel("mean within-class cosine similarity")
  ax.set_title(f"{title(summary)}: feature duplication", fontsize=10)
  ax.grid(alpha=0.3, axis="y")
  # Cosine similarities are at most 1: the headroom above keeps the legend off the bars.
  ax.set_ylim(top=1.2)
  ax.legend(fontsize=7, loc="upper center", ncol=len(kinds), frameon=False)
  fig.tight_layout()
  _save_figure(fig, path)
  plt.close(fig)
  return True


def plot_accuracy_vs_ratio(results: list[dict[str, Any]], path: str) -> None:
  """Top-1 (mean ± std) against compression ratio (log x axis): one panel per setting and
  protocol, one colour and marker per method, the same in every panel, and one legend below
  the panels (a study's 20-odd rows would bury a legend drawn inside an axis)."""
  plt = _pyplot()
  # (summary, protocol named in the title or None where the setting has one, rows)
  panels = []
  for s in results:
    groups = protocol_groups(s)
    panels += [(s, p if len(groups) > 1 else None, rows) for p, rows in groups]
  methods = list(dict.fromkeys(r["method"] for _, _, rows in panels for r in rows))
  colours = plt.get_cmap("tab20" if len(methods) > 10 else "tab10")
  style = {m: (colours(i % colours.N), "os^Dv<>pP*Xhd"[i % 13]) for i, m in enumerate(methods)}
  # Two panels a row: a setting's two protocols side by side, settings one under another.
  ncols = min(2, len(panels))
  nrows = -(-len(panels) // ncols)
  fig, axes = plt.subplots(
    nrows, ncols, figsize=(4.5 * ncols, 3.6 * nrows), squeeze=False, layout="constrained"
  )
  for ax in axes.flat[len(panels) :]:
    ax.set_visible(False)
  handles: dict[str, Any] = {}
  for ax, (summary, protocol, rows) in zip(axes.flat, panels, strict=False):
    for r in rows:
      colour, marker = style[r["method"]]
      handles[r["method"]] = ax.errorbar(
        r["bytes"]["compression_ratio"],
        100 * r["final_top1_mean"],
        yerr=100 * r["final_top1_std"],
        color=colour,
        marker=marker,
        markersize=8 if r["key"].startswith("infer") else 6,
        capsize=3,
        linestyle="none",
      )
    ax.set_xscale("log")
    # Minor-tick labels of a narrow log range overprint one another; keep the major ones.
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.axhline(100 * chance(summary), color="grey", linestyle=":", linewidth=1)
    ax.annotate(
      "chance",
      (0.01, 100 * chance(summary)),
      xycoords=("axes fraction", "data"),
      fontsize=7,
      color="grey",
      va="bottom",
    )
    ax.set_xlabel("compression ratio (stored bytes / training set bytes)", fontsize=8)
    ax.set_ylabel("top-1 % (final epoch)")
    ax.set_title(title(summary) + (f", {protocol}" if protocol else ""), fontsize=10)
    ax.grid(alpha=0.3)
  fig.legend(
    list(handles.values()),
    list(handles),
    loc="outside lower center",
    ncol=min(3, len(handles)),
    fontsize=7,
    frameon=False,
  )
  _save_figure(fig, path)
  plt.close(fig)


def plot_compensators(s: synthetic.SyntheticSet, path: str, *, subset: int = 0, classes: int = 8):
  """Grid: row 0 real images, then per teacher its compensator and compensated instances.

  Compensators are shown min-max scaled per image (they are small and signed); instances
  are shown as the student sees them, clip(x + u) back in [0, 1] pixels.
  """
  plt = _pyplot()
  if s.compensators is None:
    raise InputError("this set has no compensators to show (M = 0).")
  k = min(subset, s.K - 1)
  classes = min(classes, s.C)
  rows = np.arange(classes)
  instances, _, _ = synthetic.materialize_rows(
    s, [(k * (s.M + 1) + m) * s.C + c for m in range(s.M + 1) for c in rows]
  )
  pixels = synthetic.denormalize_uint8(instances, s.metadata).reshape(
    s.M + 1, classes, *s.images.shape[2:]
  )
  teachers = s.metadata.get("teachers", [f"teacher {m}" for m in range(s.M)])
  # A greyscale set ([H, W, 1]) is drawn as grey levels, not through a false-colour map.
  grey = s.images.shape[-1] == 1
  gray = {"cmap": "gray", "vmin": 0, "vmax": 1} if grey else {}
  fig, axes = plt.subplots(
    s.M + 1, classes + 1, figsize=(1.3 * (classes + 1), 1.3 * (s.M + 1)), squeeze=False
  )
  for m in range(s.M + 1):
    ax = axes[m][0]
    if m == 0:
      ax.text(0.5, 0.5, "real\nx", ha="center", va="center", fontsize=8)
    else:
      u = synthetic.compensator_values(s, np.array([k]), np.array([m - 1]))[0]
      u = u[..., 0] if grey else u
      ax.imshow((u - u.min()) / max(float(u.max() - u.min()), 1e-12), **gray)
      ax.set_title(f"u: {teachers[m - 1]}", fontsize=6)
    for c in range(classes):
      if grey:
        axes[m][c + 1].imshow(pixels[m, c, ..., 0], cmap="gray", vmin=0, vmax=255)
      else:
        axes[m][c + 1].imshow(pixels[m, c])
      if m == 0:
        axes[m][c + 1].set_title(f"class {c}", fontsize=6)
    for ax in axes[m]:
      ax.set_xticks([])
      ax.set_yticks([])
  fig.suptitle(f"subset {k}: real images (top) and x + u per teacher compensator", fontsize=8)
  fig.tight_layout()
  _save_figure(fig, path)
  plt.close(fig)


def _pyplot():
  """``matplotlib.pyplot`` on the file-only Agg backend (imported on first use: the tables
  need no matplotlib)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _save_figure(fig, path: str) -> None:
  """Writes a PNG atomically (temporary file, then rename)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  atomic.write(path, lambda f: fig.savefig(f, dpi=110, format="png"))


def _slug(text: str) -> str:
  return "".join(ch if ch.isalnum() else "_" for ch in text).strip("_").lower()


def write_report(
  paths: Sequence[str], out: str, *, command: str | None = None, sets: dict[str, str] | None = None
) -> dict[str, Any]:
  """Generates the report and its figures.

  Args:
    paths: distill ``summary.json`` files, one per setting, in the order to show them.
    out: the Markdown file to write; figures go to ``<dirname(out)>/figures/``.
    command: the command line to print at the top (default: this process's).
    sets: ``{setting title: INFER set path}`` overrides for the compensator grid (default
      ``<workdir>/synthetic/infer.npz`` of each run, when it exists).

  Returns:
    ``{'markdown': path, 'figures': [paths]}``.
  """
  results = load_results(paths)
  if not results:
    raise InputError("give at least one results file.")
  fig_dir = os.path.join(os.path.dirname(os.path.abspath(out)), "figures")
  written = []
  accuracy_png = os.path.join(fig_dir, "accuracy_vs_compression.png")
  plot_accuracy_vs_ratio(results, accuracy_png)
  written.append(accuracy_png)
  grids = {}
  extra: dict[str, list[str]] = {}
  out_dir = os.path.dirname(os.path.abspath(out))
  for summary in results:
    curves_png = os.path.join(fig_dir, f"curves_{_slug(title(summary))}.png")
    if plot_curves(summary, curves_png):
      written.append(curves_png)
      extra.setdefault(title(summary), []).append(
        f"![learning curves]({os.path.relpath(curves_png, out_dir)})"
      )
    similarity_png = os.path.join(fig_dir, f"feature_similarity_{_slug(title(summary))}.png")
    if plot_feature_similarity(summary, similarity_png):
      written.append(similarity_png)
      extra.setdefault(title(summary), []).append(
        f"![within-class feature similarity]({os.path.relpath(similarity_png, out_dir)})"
      )
  for summary in results:
    path = (sets or {}).get(title(summary))
    if path is None:
      workdir = config_lib.workdir(summary["config"])
      path = os.path.join(workdir, "synthetic", "infer.npz")
    if os.path.exists(path):
      png = os.path.join(fig_dir, f"compensators_{_slug(title(summary))}.png")
      plot_compensators(synthetic.load(path), png)
      grids[title(summary)] = os.path.relpath(png, os.path.dirname(os.path.abspath(out)))
      written.append(png)
  hardware = {tuple(sorted((k, str(v)) for k, v in r["hardware"].items())) for r in results}
  command = command or shlex.join(["python", "-m", "infer_jax.report", *sys.argv[1:]])
  md = [
    "# Results",
    "",
    "Generated from the JSON files named below by the command that follows; do not edit by "
    "hand, rerun it. Protocol: docs/protocol.md, in short: "
    "final-epoch top-1 on the real test set, mean ± sample standard deviation over the "
    "evaluation seeds, every method with the same teachers, student, augmentation, MixUp, "
    "temperature and optimiser, under the protocol each table names: same_steps (the same "
    "number of optimisation steps) or same_epochs (the same epochs over each set) "
    "(INFER+Dyn: 1/(M+1) of the epochs, labels from the teachers online, whose weights then "
    "count in its bytes). "
    "A best-epoch figure, where shown, is selected on the test set and is for comparison "
    "with papers only.",
    "",
    "```",
    command,
    "```",
    "",
    "Hardware: " + "; ".join(", ".join(f"{k} {v}" for k, v in h) for h in sorted(hardware)) + ".",
    "",
    f"![top-1 against compression ratio]({os.path.relpath(accuracy_png, out_dir)})",
    "",
  ]
  md += [setting_markdown(r, grids, extra) + "\n" for r in results]
  text = "\n".join(md)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  atomic.write_text(out, text)
  return {"markdown": out, "figures": written}


def main(argv: list[str] | None = None) -> int:
  """Command-line entry point; returns the exit status."""
  parser = argparse.ArgumentParser(
    prog="python -m infer_jax.report",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("results", nargs="+", help="summary.json files written by infer_jax.distill")
  parser.add_argument("--out", default="docs/results.md", help="the Markdown file to write")
  parser.add_argument("--preamble", default="", help="a Markdown file inserted after the title")
  args = parser.parse_args(argv)
  done = {}

  def job() -> None:
    done["info"] = write_report(args.results, args.out)
    if args.preamble:
      _insert_preamble(args.out, args.preamble)

  status = guarded(job)  # one line, not a traceback, for bad input or a refused write
  if status:
    return status
  info = done["info"]
  print(f"wrote {info['markdown']} and {len(info['figures'])} figure(s)")
  return 0


def _insert_preamble(out: str, preamble: str) -> None:
  """Puts the text of ``preamble`` after the report's title line (hand-written context)."""
  with open(preamble) as f:
    extra = f.read().strip()
  with open(out) as f:
    title_line, rest = f.read().split("\n", 1)
  atomic.write_text(out, f"{title_line}\n\n{extra}\n{rest}")


if __name__ == "__main__":
  sys.exit(main())
