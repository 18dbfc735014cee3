"""A sweep's figures, drawn from its records alone (matplotlib, Agg: no display needed):

- loss.png: loss minus the optimal loss against step, log scale, a line per trial, a panel
  per program;
- error_vs_lr.png: final max |error| against learning rate (log-log), a line per optimiser
  (the median over seeds and other settings; every trial as a dot);
- fit.png, where the trial's task can draw one: the best trial's data (subsampled) and fit
  (y = m*x + b: the normal-equation line and every member's line).
"""

import contextlib
import hashlib
import json
import math
import os
from collections import defaultdict
from typing import List, Optional, Sequence

import numpy as np

from ymxb import __version__
from ymxb.errors import UsageError
from ymxb.spec import data, registry
from ymxb.spec.settings import TrialSpec
from ymxb.results.record import TrialRecord, larger_first, metric_names
from ymxb.results.store import Store
from ymxb.results.views.table import rank, varying_settings

MAX_PANELS = 12  # programs drawn in loss.png; the rest are listed in its title
LEGEND_LINES = 10  # a panel with more lines than this gets no legend
PANEL_LINES = 64  # a panel draws at most this many trials (evenly picked), and says so
DATA_POINTS = 2000  # points of the data drawn in fit.png


def draw(records: Sequence[TrialRecord], folder: str, source: Optional[Store] = None) -> List[str]:
    """Draw every figure into `folder`; return their paths. `source`: the store the records
    are of, which has the curves records do not hold; the figures are drawn again only once
    it or the records have changed (at 10^5 trials drawing takes ~20 s, and `results` is
    asked again and again)."""
    if not records:
        return []
    stamp = _stamp(source.path, records) if source else None
    kept = _drawn(folder, stamp)
    if kept:
        return kept
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = source.curves(records) if source else records
    os.makedirs(folder, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(folder, STAMP))  # until all are drawn again
    paths = []
    figures = [("loss.png", _loss), ("error_vs_lr.png", _error_vs_lr)]
    best = _best(records)
    if metric_names(records):
        figures.append(("metrics_vs_lr.png", _metrics_vs_lr))
    if best.solution and registry.of_config(best.config).draws_fit:
        figures.append(("fit.png", _fit))
    for name, figure in figures:
        fig = figure(plt, records)
        path = os.path.join(folder, name)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    if stamp:
        with open(os.path.join(folder, STAMP), "w") as f:
            json.dump({**stamp, "figures": [os.path.basename(p) for p in paths]}, f)
    return paths


STAMP = ".drawn.json"  # what the figures in a folder were drawn from


def _stamp(source: str, records: Sequence[TrialRecord]) -> Optional[dict]:
    """What the figures are drawn from: the store as it is (append-only: its size and time),
    which of its trials (a sweep draws its own), and the ymxb that drew them."""
    try:
        st = os.stat(source)
    except FileNotFoundError:
        return None
    ids = hashlib.sha256("\n".join(sorted(r.trial_id for r in records)).encode()).hexdigest()
    return {"store": [st.st_size, st.st_mtime_ns], "trials": ids, "ymxb": __version__}


def _drawn(folder: str, stamp: Optional[dict]) -> List[str]:
    """The figures in `folder` if they were drawn from exactly `stamp`; else []."""
    try:
        with open(os.path.join(folder, STAMP)) as f:
            kept = json.load(f)
    except (OSError, ValueError):
        return []
    paths = [os.path.join(folder, name) for name in kept.pop("figures", [])]
    if stamp is None or kept != stamp or not paths or not all(os.path.isfile(p) for p in paths):
        return []
    return paths


def _loss(plt, records):
    groups = defaultdict(list)
    for r in records:
        groups[r.group].append(r)
    shown = list(groups.items())[:MAX_PANELS]
    cols = min(3, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    varying = varying_settings(records)
    for ax, (group, members) in zip(axes.flat, shown):
        drawn = members[::math.ceil(len(members) / PANEL_LINES)]
        for r in drawn:
            excess = np.maximum(np.asarray(r.loss_curve["loss"], float) - (r.optimal_loss or 0.0), 1e-16)
            ax.plot(r.loss_curve["step"], excess, lw=1, label=_label(r, ("lr", "seed")))
        first = members[0].config
        # What sets this program apart from the others (lr and seed vary inside programs).
        apart = [f"{k}={first.get(k)}" for k in varying if k not in ("lr", "seed", "optimizer", "model")
                 and len({str(m.config.get(k)) for m in members}) == 1]
        ax.set_title(", ".join([first["optimizer"], first["model"], _shape(first), *apart])
                     + (f", ensemble {first['ensemble']}" if first["ensemble"] else "")
                     + (f" ({len(drawn)} of {len(members)} trials)" if len(drawn) < len(members) else ""),
                     fontsize=9)
        if any(np.any(np.asarray(r.loss_curve["loss"], float) > 0) for r in drawn):  # NaN: not > 0
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss - optimal loss (floor 1e-16)" if members[0].solution else "loss")
        ax.grid(alpha=0.3)
        if len(members) <= LEGEND_LINES:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.set_visible(False)
    more = f" (first {MAX_PANELS} of {len(groups)} programs)" if len(groups) > MAX_PANELS else ""
    references = {_reference_name(r.config) for r in records if r.solution}
    what = (f"Loss above the {references.pop() if len(references) == 1 else 'reference'} optimum"
            if references else "Loss")
    fig.suptitle(f"{what}, a line per trial{more}; varying: {', '.join(varying) or 'nothing'}", fontsize=10)
    fig.tight_layout()
    return fig


def _reference_name(config) -> str:
    """What a trial's task calls its reference ("normal-equation"), or "reference" where its task
    cannot be imported here (results read elsewhere)."""
    try:
        return registry.of_config(config).reference_name.replace("_", "-")
    except UsageError:
        return "reference"


def _error_vs_lr(plt, records):
    # Against the reference where every trial's task gives one; else the final loss.
    referenced = all(r.solution for r in records)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    positive = _against_lr(ax, records, lambda r: r.max_error if referenced else r.final_loss)
    if referenced:
        tol = records[0].config["tol"]
        ax.axhline(tol, color="grey", ls="--", lw=1, label=f"tol {tol:g}")
    if positive:
        ax.set_yscale("log")  # (a sweep that all diverged stays linear)
    ax.set_ylabel("final max |param - reference solution|" if referenced else "final loss")
    what = "error" if referenced else "loss (no reference solution)"
    ax.set_title(f"Final {what} against learning rate (median; dots: every trial; diverged: absent)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _metrics_vs_lr(plt, records):
    """A panel per metric of the trials' task (eval_accuracy, ...) against learning rate."""
    names = metric_names(records)
    fig, axes = plt.subplots(1, len(names), figsize=(4.8 * len(names), 4.0), squeeze=False)
    for ax, name in zip(axes.flat, names):
        _against_lr(ax, records, lambda r: r.metrics.get(name))
        ax.set_ylabel(name)
        ax.set_title(f"{name} at the end ({'larger' if larger_first(name, records) else 'smaller'} is better)",
                     fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle("The task's metrics against learning rate (median; dots: every trial; none: absent)", fontsize=10)
    fig.tight_layout()
    return fig


def _against_lr(ax, records, value) -> bool:
    """`value(record)` against each trial's learning rate, a line (the median) per optimiser and
    a dot per trial; a missing or non-finite value is left out. Whether any value is positive."""
    by_optimizer = defaultdict(lambda: defaultdict(list))
    for r in records:
        v = value(r)
        by_optimizer[r.config["optimizer"]][r.config["lr"]].append(v if v is not None and math.isfinite(v) else np.nan)
    for optimizer, by_lr in sorted(by_optimizer.items()):
        lrs = sorted(by_lr)
        line, = ax.plot(lrs, [np.nanmedian(by_lr[lr]) if not np.all(np.isnan(by_lr[lr])) else np.nan
                              for lr in lrs], marker="o", label=optimizer)
        for lr in lrs:
            ax.scatter([lr] * len(by_lr[lr]), by_lr[lr], s=8, alpha=0.4, color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.grid(alpha=0.3, which="both")
    return any(v > 0 for by_lr in by_optimizer.values() for values in by_lr.values() for v in values)  # NaN: not > 0


def _fit(plt, records):
    best = _best(records)
    x, y = _dataset(best.config)
    pick = np.random.default_rng(0).choice(len(x), min(DATA_POINTS, len(x)), replace=False)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter(x[pick], y[pick], s=3, alpha=0.3, color="grey", label=f"data ({len(pick)} of {len(x)} points)")
    fitted = [m.shown for m in best.members if None not in m.shown.values()]  # diverged: none to draw
    trial = TrialSpec.of_config(best.config)
    registry.of_config(best.config).draw_fit(trial.of_task, ax, x, y, fitted, best.solution)
    ax.set_title(f"Best trial {best.trial_id}: {_label(best, varying_settings(records)) or 'the only trial'}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _best(records: Sequence[TrialRecord]) -> TrialRecord:
    return min(records, key=lambda r: (not r.verified, rank(r)))


def _dataset(cfg: dict):
    """The data a trial trained on: every host's shard, of every slice."""
    return data.global_dataset(TrialSpec.of_config(cfg), cfg.get("slices", 1) * cfg["hosts"])


def _label(record: TrialRecord, keys) -> str:
    return ", ".join(f"{k}={record.config[k]:g}" if isinstance(record.config[k], float)
                     else f"{k}={record.config[k]}" for k in keys)


def _shape(cfg) -> str:
    slices = cfg.get("slices", 1)  # records from before --slices have none
    return f"{slices}x" * (slices > 1) + f"{cfg['hosts']}x{cfg['devices_per_host']}"
