"""`launch.py results DIR --tensorboard OUT`: trials in TensorBoard's event format, written with
tensorboardX (the optional extra: `pip install 'ymxb[tensorboard]'`), for `tensorboard --logdir OUT`.

    OUT/<group>/                          a program: its trials' table (TEXT)
    OUT/<group>/lr=0.1,seed=3,<trial id>/  a trial: its loss curve (SCALARS, `loss`), its settings
                                          that vary in the program and its metrics, its task's too (HPARAMS)
"""

import math
import os
from typing import Dict, List, Sequence

from ymxb.results.views import query
from ymxb.results.views import table as trial_table
from ymxb.errors import UsageError
from ymxb.results.record import TrialRecord
from ymxb.results.store import Store

# What the HPARAMS table compares trials by (beside the curves' own `loss`): query's metrics,
# and each trial's task's own (eval_accuracy, ...).
METRICS = ("final_loss", "max_error", "converged_step", "verified", "stopped_at")


def tensorboard(records: Sequence[TrialRecord], store: Store, out: str) -> List[str]:
    """Write each record's run under `out` (which must be new or empty); the runs' folders."""
    try:
        from tensorboardX import SummaryWriter
        from tensorboardX.summary import hparams
    except ImportError:
        raise UsageError("--tensorboard needs tensorboardX: pip install 'ymxb[tensorboard]' "
                         "(or pip install tensorboardX)") from None
    if os.path.isdir(out) and os.listdir(out):
        raise UsageError(f"--tensorboard {out}: the folder is not empty (TensorBoard would show an "
                         f"earlier export's runs twice); give a new or empty folder")
    programs: Dict[str, List[TrialRecord]] = {}
    for r in store.curves(records):
        programs.setdefault(r.group, []).append(r)
    runs = []
    for group, trials in programs.items():
        folder = os.path.join(out, group)
        with SummaryWriter(folder) as writer:  # as Markdown, the table is code: indented
            writer.add_text("trials", "    " + trial_table.table(trials).replace("\n", "\n    "))
        varying = trial_table.varying_settings(trials) if len(trials) > 1 else []
        for r in trials:
            name = ",".join(f"{k}={_value(r.config[k])}" for k in varying)
            run = os.path.join(folder, f"{name},{r.trial_id}" if name else r.trial_id)
            with SummaryWriter(run) as writer:
                for step, loss in zip(r.loss_curve["step"], r.loss_curve["loss"]):
                    if loss is not None and math.isfinite(loss):
                        writer.add_scalar("loss", loss, step)
                metrics = {f"hparam/{k}": float(v) for k in (*METRICS, *r.metrics) for v in [query.value(r, k)]
                           if v is not None and math.isfinite(v)}
                # add_hparams would write them through a second writer, to a second run folder.
                for summary in hparams({k: _value(r.config[k]) for k in varying}, metrics):
                    writer.file_writer.add_summary(summary)
                for tag, value in metrics.items():
                    writer.add_scalar(tag, value)
            runs.append(run)
    return runs


def _value(value):
    """A setting as HPARAMS takes one: a number, a string or a bool."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)
