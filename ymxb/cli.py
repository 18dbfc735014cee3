"""Command line: parse and validate, bring up (or connect to) Ray, run, verify, report.

    launch.py [flags]                 one trial (a sweep of one), today's report
    launch.py sweep FILE [options]    every trial of a sweep file not yet in its results store
    launch.py results DIR [--json]    a results store's table and plots again, no cluster
    launch.py inspect [flags]         what one training step is, for those flags
    launch.py run SCRIPT [flags] -- ARGS   your own program on every host of the slice

Exit codes: 0 verified (every trial), 1 trained but not verified (a result, not a crash),
2 bad usage or a failed launch, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

import argparse
import contextlib
import dataclasses
import functools
import gc
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import types
from typing import Dict, List, Optional, Union

import numpy as np

from ymxb.driver import checkpoint
from ymxb.spec import data, registry, settings as config, sweep as sweeps, tasks
from ymxb import api as experiment, plan as plans
from ymxb.results import params
from ymxb.results.views import query, report
from ymxb.results.views import table as trial_table
from ymxb.spec.settings import Recovery, SliceSpec, TrialSpec
from ymxb.errors import Cause, HostFailure, UsageError
from ymxb.ops.ray_cluster import ray_cluster
from ymxb.ops.reaper import start_time
from ymxb.api import Options
from ymxb.names import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_RAISED, EXIT_NOT_VERIFIED, EXIT_TERMINATED, EXIT_VERIFIED, PROG,
                        launch_line)
from ymxb.results.store import DB, Store

SLICE, TRIAL, RECOVERY = SliceSpec(), TrialSpec(), Recovery()
RUNS = "runs"  # a sweep's results go to runs/<its name>/ unless --out


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2), not the whole usage block."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only where it has one worth showing."""

    def _get_help_string(self, action):
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def _parser(prog: str, task: tasks.Task) -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog,
        description="Train a task's model with JAX on every host of a slice, one Ray actor per host, "
                    "and verify the result: by default y = m*x + b, against the normal equation. "
                    "With no cluster it simulates one: N local processes, each a host with K CPU "
                    "devices.",
        epilog="`launch.py run SCRIPT.py` runs your own program on every host (see `launch.py run --help`); "
               "`launch.py sweep FILE` runs a sweep file's trials (see `launch.py sweep --help`); "
               "`launch.py results DIR` shows a sweep's results again; "
               "`launch.py inspect [flags]` prints, instead of training, the jaxpr, vmapped axes, "
               "collectives and compiled cost of one step for those flags (one process, no cluster). "
               "Exit codes: 0 verified, 1 trained but not verified, 2 bad usage or failed launch, "
               "130 interrupted (Ctrl-C), 143 terminated (SIGTERM); every host is stopped either way.",
        formatter_class=_Help)
    t = TRIAL
    _slice_flags(p.add_argument_group("slice"))
    g = p.add_argument_group("task")
    g.add_argument("--task", metavar="NAME", default=registry.DEFAULT,
                   help="the model and its data: " + ", ".join(f"{t.name} ({t.summary})" for t in registry.BUILT_IN.values())
                        + ", or package.module:NAME, a task of your own (README: Your own model); `--task NAME "
                        "--help` lists its settings")
    g = p.add_argument_group(task.about)
    for setting in task.settings:
        g.add_argument(setting.flag, type=type(setting.default), metavar=setting.metavar or setting.name.upper(),
                       default=setting.default, help=setting.help)
    g.add_argument("--data-seed", type=int, metavar="N", default=t.data_seed, help="seed of the data, 0 to 2**32-1")
    g.add_argument("--samples-per-host", type=int, metavar="N", default=t.samples_per_host,
                   help="points each host generates (a task's fixed dataset: cuts; 0: all of it, cut evenly "
                        "over the hosts); split evenly over its devices")
    g = p.add_argument_group("training (gradient descent on the mean of the task's loss plus its penalty)")
    g.add_argument("--model", metavar="NAME", default=task.models[0], help=f"one of {', '.join(task.models)}")
    g.add_argument("--optimizer", metavar="NAME", default=t.optimizer,
                   help=f"optax optimiser, one of {', '.join(config.OPTIMIZERS)}: sgd and adam "
                        "converge at the defaults, adagrad wants --lr 0.5, and rmsprop at a constant "
                        "lr hovers near the solution (and may not verify)")
    g.add_argument("--lr", type=float, metavar="LR", default=t.lr, help="learning rate")
    g.add_argument("--momentum", type=float, metavar="M", default=t.momentum,
                   help=f"momentum of {' and '.join(config.OPTIONS['momentum'])}, 0 to 1; 0: none")
    g.add_argument("--weight-decay", type=float, metavar="WD", default=t.weight_decay,
                   help="adamw's decoupled weight decay; 0: none (adamw is then adam)")
    g.add_argument("--schedule", metavar="NAME", default=t.schedule,
                   help=f"the learning rate over the steps, one of {', '.join(config.SCHEDULES)}: "
                        "constant, or decaying from --lr to 0 at --steps (warmup_cosine warms up over the first 5%%)")
    g.add_argument("--batch-size", type=int, metavar="B", default=t.batch_size,
                   help="points per step over the whole slice, drawn afresh each step from the seed, the step "
                        "and the device (with replacement, each device from its own points); 0: full batch")
    g.add_argument("--seed", type=int, metavar="N", default=t.seed, help="seed of the initial params, 0 to 2**32-1")
    g.add_argument("--steps", type=int, metavar="N", default=t.steps, help="training steps in total")
    g.add_argument("--steps-per-call", type=int, metavar="N", default=t.steps_per_call,
                   help="steps fused into one compiled call (lax.scan); hosts block between calls")
    g.add_argument("--parallel", metavar="MODE", default=t.parallel,
                   help="pmap (pmap over local devices, collectives across hosts) or sharding "
                        "(jit over a global Mesh)")
    g.add_argument("--ensemble", type=int, metavar="E", default=t.ensemble,
                   help="train E independent members at once, split over all devices of all hosts "
                        "(padded to a multiple of the device count); 0: one data-parallel model")
    g = p.add_argument_group("launch and output")
    _launch_flags(g)
    g.add_argument("--tol", type=float, metavar="TOL", default=t.tol,
                   help="max |param - the task's reference solution| for the run to verify (the default task's: "
                        "the normal equation); a task without one is verified without it")
    g.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    g.add_argument("--dry-run", action="store_true", help="check the flags and the plan (slice, memory, "
                   "task), say what would run, and start nothing")
    g.add_argument("--dump-data", metavar="PATH",
                   help="write the global dataset (arrays x and y) to PATH as .npz")
    g.add_argument("--save-params", metavar="PATH",
                   help="write the trained params to PATH as .npz, one array per param (np.load(PATH)); "
                        "an ensemble's with a leading member axis")
    g = p.add_argument_group("surviving host loss (a host that dies, hangs or is preempted: the "
                             "slice restarts and training goes on from the last checkpoint)")
    _recovery_flags(g)
    g.add_argument("--checkpoint-dir", metavar="DIR",
                   help="where the driver keeps the run's checkpoint until the run ends; default: a "
                        "temporary folder, removed when the run ends and kept (and named) if it fails "
                        "or is stopped")
    g.add_argument("--resume", metavar="DIR",
                   help="continue the run whose checkpoint is in DIR (its --checkpoint-dir, or the "
                        "folder a failed run named), given the same flags")
    return p


def _slice_flags(g) -> None:
    d = SLICE
    g.add_argument("--hosts", type=int, metavar="N", default=d.hosts,
                   help="hosts (JAX processes) of each slice, one Ray actor each; default: cpu-sim 4, "
                        "tpu the slice's hosts, gpu every GPU node")
    g.add_argument("--slices", type=int, metavar="N", default=d.slices,
                   help="multislice: N whole slices of one kind in one JAX program (tpu; cpu-sim "
                        "simulates them); the mesh is slices x devices, every host gets its "
                        "MEGASCALE_* environment")
    g.add_argument("--devices-per-host", type=int, metavar="K", default=d.devices_per_host,
                   help="local devices per host; default: cpu-sim 2 (simulated CPU devices), tpu the "
                        "host's chips, gpu the node's GPUs")
    g.add_argument("--platform", metavar="NAME", default=d.platform,
                   help=f"one of {', '.join(config.PLATFORMS)}; default: the first the Ray cluster "
                        f"offers, in that order")
    g.add_argument("--tpu-type", metavar="TYPE", default=d.tpu_type,
                   help="tpu: the slice to use, by pod type (v4-32) or generation (v4); default: "
                        "the only kind of slice present")
    g.add_argument("--tpu-topology", metavar="TOPOLOGY", default=d.tpu_topology,
                   help="tpu: the slice to use, by topology (2x2x4)")


def _launch_flags(g, timeout_help: str = "training between two completed compiled calls") -> None:
    d = SLICE
    g.add_argument("--address", metavar="HOST:PORT", default=None,
                   help="Ray cluster to join: host:port of its GCS, or auto for the one this "
                        "machine belongs to (on a cluster's head node); default: $RAY_ADDRESS, else "
                        "start an embedded local Ray for this run")
    g.add_argument("--timeout", type=float, metavar="SECONDS", default=d.timeout,
                   help=f"seconds placement and jax.distributed.initialize may take, and {timeout_help}, "
                        "before the run fails naming the host that died or hung")
    g.add_argument("--wait", type=float, metavar="SECONDS", default=d.wait,
                   help="joined to a cluster (--address): seconds to wait for the slice to be whole, "
                        "as the cluster's autoscaler makes it (saying on stderr what it waits for); "
                        "0: fail at once")


def _recovery_flags(g) -> None:
    r = RECOVERY
    g.add_argument("--checkpoint-every", type=int, metavar="N", default=r.checkpoint_every,
                   help="compiled calls between checkpoints (the most work a restart redoes)")
    g.add_argument("--max-restarts", type=int, metavar="R", default=r.max_restarts,
                   help="restarts after failures (a host died, crashed or hung) before the run fails")
    g.add_argument("--max-preemptions", type=int, metavar="P", default=r.max_preemptions,
                   help="restarts after a host or its node was taken away (preempted, left the cluster)")


def parse(argv: List[str], prog: str = PROG):
    """Flags -> (SliceSpec, TrialSpec, the other options). Raises UsageError on bad input."""
    args = _parser(prog, registry.get(_task_named(argv))).parse_args(argv)
    args.address = _address(args.address)
    args.recovery = Recovery.of(args)
    return SliceSpec.of(args), TrialSpec.of(args), args


def _task_named(argv: List[str]) -> str:
    """The --task of `argv` (its settings are flags too), else the default."""
    named = _Parser(add_help=False)
    named.add_argument("--task", default=registry.DEFAULT)
    try:
        return named.parse_known_args(argv)[0].task
    except UsageError:  # the whole parser says what is wrong, as for any flag
        return registry.DEFAULT


def _address(given: Optional[str]) -> Optional[str]:
    """The Ray cluster to join: --address, else $RAY_ADDRESS, else None (an embedded one)."""
    return given or os.environ.get("RAY_ADDRESS") or None


def _sweep_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=f"{PROG} sweep", formatter_class=_Help,
        description="Run every trial of a sweep file that its results store lacks, on warm slices "
                    "(placed and initialised once per slice shape), trials that differ only in lr "
                    "and seed batched into one program; then print the comparison table and draw "
                    "the plots. Rerun it to finish an interrupted sweep; nothing recorded runs twice.",
        epilog="Exit codes: 0 every trial verified (or stopped by a rung), 1 all ran but some did not "
               "verify, 2 bad input or a failed launch (finished programs stay recorded), 130 "
               "interrupted, 143 terminated.")
    p.add_argument("file", help="the sweep file (YAML: name, slice, base, grid, sample, trials, stop; "
                   "see examples/sweeps/ and the README)")
    p.add_argument("--out", metavar="DIR", help=f"the results folder; default: {RUNS}/<the sweep's name>")
    p.add_argument("--fresh", action="store_true", help="forget the recorded trials and run them all")
    p.add_argument("--dry-run", action="store_true", help="check the file and the plan (slices, memory, "
                   "tasks), say what would run (the recorded trials skipped), and start nothing")
    p.add_argument("--json", action="store_true", help="print one JSON document with every record instead of the table")
    p.add_argument("--address", metavar="HOST:PORT", help="Ray cluster to join (as for a single run); "
                   "default: $RAY_ADDRESS, else an embedded local Ray")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="as for a single run; default: the "
                   f"file's slice timeout, else {SLICE.timeout:g}")
    p.add_argument("--wait", type=float, metavar="SECONDS", help="joined to a cluster, as for a single run; "
                   f"default: the file's slice wait, else {SLICE.wait:g}")
    _recovery_flags(p.add_argument_group(
        "surviving host loss (the running program's checkpoint is kept in the results folder's "
        "checkpoints/ until its records are in; a rerun continues from it)"))
    return p


def _results_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=f"{PROG} results", formatter_class=_Help,
                description="Print a sweep's comparison table again and (re)draw its plots, from its "
                            "results folder alone (no cluster); or ask it which trials, in what order, "
                            "are best by what.",
                epilog="Keys: every setting, named as in a record's config (lr, optimizer, steps, "
                       "hosts, ...), the metrics " + ", ".join(query.METRICS) + ", and a task's own "
                       "metrics (train_<name>, and eval_<name>, eval_loss where it holds data out). Example: "
                       f"{PROG} results runs/optimizers --where 'optimizer==adam and lr<0.1' "
                       "--sort final_loss --top 10 --best-by final_loss,wall_s. Exit codes: 0 every "
                       "trial shown verified (or stopped by a rung), 1 some did not, 2 bad input.")
    p.add_argument("dir", help=f"the results folder ({RUNS}/<name>, or a sweep's --out)")
    p.add_argument("--where", metavar="COND", help="only the trials for which COND holds: comparisons "
                   "(== != < <= > >= in; 0.01<lr<0.1) joined by and/or/not, a bare word a string "
                   "(optimizer==adam)")
    p.add_argument("--sort", metavar="KEY", help="one list in the order of KEY, smallest first "
                   "(--sort=-KEY: largest first), trials without a value last; default: grouped by program")
    p.add_argument("--top", type=int, metavar="N", help="only the first N trials in --sort's order (default: "
                   "by --best-by's first metric, else as the table ranks them)")
    p.add_argument("--best-by", metavar="METRIC[,METRIC]", help="mark with * the best (smallest) by "
                   f"one of {', '.join(query.RANKING)}, a task's metric (largest first where the task says "
                   "so: eval_accuracy) or a numeric setting; several: the Pareto front (no other trial "
                   "better in all); default: max_error, or final_loss without a reference")
    p.add_argument("--format", choices=query.FORMATS, default="table",
                   help="table; csv (a row per trial: every setting and metric, best 0/1); json (every record)")
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p.add_argument("--tensorboard", metavar="OUT", help="also write the trials shown to OUT (new or empty) "
                   "for `tensorboard --logdir OUT`: each one's loss curve and, per program, the settings "
                   "that vary and the metrics (HPARAMS) and its table (TEXT); needs pip install "
                   "'ymxb[tensorboard]'")
    return p


def _run_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=f"{PROG} run", formatter_class=_Help,
                usage=f"{PROG} run SCRIPT.py|package.module:FUNCTION [flags] [-- ARGS ...]",
                description="Run your own JAX program on every host of a slice, one Ray actor (one "
                            "process) per host, jax.distributed already joined: a script as __main__ "
                            "with sys.argv = [SCRIPT, *ARGS], from this folder, or a function called "
                            "with no arguments (each host's return value comes back). Host 0's stdout "
                            "is this command's stdout; every host's lines go to stderr as [host N] ....",
                epilog="In the program: ymxb.report(step, **metrics) shows progress, keeps the metrics "
                       "(--out) and lets a host that stops reporting be named as hung; ymxb.attempt() "
                       "says which run it is after restarts (also $YMXB_ATTEMPT); "
                       "ymxb.checkpoint_dir() is --checkpoint-dir (also $YMXB_CHECKPOINT_DIR). Outside "
                       "ymxb they do nothing, 0 and None. Exit codes: host 0's (sys.exit) once every host "
                       "is done, 1 a host's program raised, 2 bad usage or a host lost, 130 interrupted, "
                       "143 terminated; every host is stopped either way.")
    p.add_argument("target", metavar="SCRIPT.py|package.module:FUNCTION", help="what every host runs")
    _slice_flags(p.add_argument_group("slice"))
    g = p.add_argument_group("launch and output")
    _launch_flags(g, timeout_help="a program that has called ymxb.report between two reports")
    g.add_argument("--out", metavar="DIR", help="keep every host's reports in DIR/metrics.jsonl (a line "
                   "each: host, attempt, step, time, metrics; pandas.read_json(path, lines=True))")
    g.add_argument("--quiet-hosts", action="store_true", help="on stderr, host 0's lines alone (a failed "
                   "host's last lines are still shown with its failure)")
    g.add_argument("--json", action="store_true", help="print one JSON document (each host's exit code and "
                   "return value, the restarts); host 0's stdout then goes to stderr with the others'")
    g.add_argument("--dry-run", action="store_true", help="check the program and the flags, say what would "
                   "run, and start nothing")
    g = p.add_argument_group("surviving host loss (a host that dies, hangs or is preempted: every host "
                             "is stopped and the program runs again on a new slice, from its own checkpoint)")
    g.add_argument("--max-restarts", type=int, metavar="R", default=0,
                   help="runs again after failures (a host died, crashed or hung) before the run fails")
    g.add_argument("--max-preemptions", type=int, metavar="P", default=RECOVERY.max_preemptions,
                   help="runs again after a host or its node was taken away (preempted, left the cluster)")
    g.add_argument("--checkpoint-dir", metavar="DIR", help="the program's own checkpoint folder, as "
                   "ymxb.checkpoint_dir() tells it; on a cluster, storage every host sees (a bucket)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"inspect": _inspect, "sweep": _sweep, "results": _results, "run": _user_program}
    try:
        if argv[:1] and argv[0] in commands:
            return commands[argv[0]](argv[1:])
        return _launch(argv)
    except UsageError as err:  # one line, whatever a value it quotes holds
        _log(launch_line("error: " + " ".join(str(err).splitlines())))
        return EXIT_FAILED


def _inspect(argv: List[str]) -> int:
    from ymxb.host.inspect import inspect

    spec, trial, _ = parse(argv, prog=f"{PROG} inspect")
    spec = plans.known_shape(spec.replace(address=None))
    print(inspect(spec, plans.bound(spec, trial)))
    return 0


def _launch(argv: List[str]) -> int:
    spec, trial, args = parse(argv)
    todo = plans.make(sweeps.single(spec, trial))
    for flag, path in (("--dump-data", args.dump_data), ("--save-params", args.save_params)):
        if path:
            _check_writable(flag, path)
    if args.resume and args.checkpoint_dir and args.resume != args.checkpoint_dir:
        raise UsageError("--resume DIR continues with DIR as its --checkpoint-dir: give one of them")
    folder = args.resume or args.checkpoint_dir
    if args.dry_run:
        return _dry_run(todo)
    if args.resume:
        if not os.path.isdir(args.resume):
            raise UsageError(f"--resume {args.resume}: no such folder (give the --checkpoint-dir of "
                             f"the run, or the folder a failed run named)")
        for program in todo.known_programs():  # the others: once the platform shapes the slice
            experiment.resume_point(args.resume, program, required=True)
    if folder:
        _check_folder(folder, "checkpoints", "--resume" if args.resume else "--checkpoint-dir")

    with _checkpoint_folder(folder) as checkpoints:
        ended = _run(todo, spec.address, Options(args.recovery, checkpoints, resume=bool(args.resume)))
    if isinstance(ended, int):
        return ended
    outcome, run = ended.outcome, ended.outcome.last_run
    if args.dump_data:
        x, y = data.global_dataset(run.program.trial, run.program.slice.processes)
        with open(args.dump_data, "wb") as f:  # a file object: np.savez adds no suffix
            np.savez(f, x=x, y=y)
    if args.save_params:
        kept = next(params.by_trial(run))
        if kept is None:
            _log(launch_line(f"--save-params: not every model came back from the hosts; {args.save_params} "
                             f"not written"))
        else:
            params.write(args.save_params, kept)
    # Where the time went, in the order it passed.
    phases = {"driver": ended.phases["driver"], "ray_start": ended.phases["ray_start"], **outcome.phases,
              "ray_stop": ended.phases["ray_stop"]}
    result = report.build(outcome.records[0], run, ended.wall_s, phases, outcome.restarts)
    print(report.to_json(result) if args.json else report.summary(result), flush=True)
    return _verdict(outcome.records)


@contextlib.contextmanager
def _checkpoint_folder(given: Optional[str]):
    """The run's checkpoint folder: `given`, else a temporary one, removed when the run ends
    unless it holds a checkpoint (the run failed or was stopped): then it is named."""
    folder = given or tempfile.mkdtemp(prefix="ymxb-ckpt-")
    try:
        yield folder
    finally:
        if checkpoint.files(folder):
            _log(launch_line(f"the run's checkpoint is kept in {folder}; `{PROG} --resume {folder}` "
                      f"with the same flags continues it"))
        elif not given:
            shutil.rmtree(folder, ignore_errors=True)


def _sweep(argv: List[str]) -> int:
    args = _sweep_parser().parse_args(argv)
    address = _address(args.address)
    sweep = sweeps.load(args.file, SliceSpec(address=address))
    given = {k: getattr(args, k) for k in ("timeout", "wait") if getattr(args, k) is not None}
    if given:  # the command line wins over the file
        sweep = dataclasses.replace(sweep, trials=tuple((s.replace(**given), t) for s, t in sweep.trials))
    try:
        todo = plans.make(sweep)
    except UsageError as err:
        raise UsageError(f"{args.file}: {sweeps.as_key(str(err))}") from None
    folder = args.out or os.path.join(RUNS, sweep.name)
    if args.dry_run:
        if os.path.isdir(folder) and not args.fresh:
            todo.skip_recorded(Store(folder).load())
        return _dry_run(todo)
    _check_folder(folder)
    with Store(folder).locked() as store:  # one sweep at a time writes a store
        if args.fresh:
            store.clear()
        todo.skip_recorded(store.load())
        trials, pending = todo.trials, todo.pending
        # The file as it ran, beside its records (each version kept: the file may be this copy).
        sweep_file = store.keep_sweep_file(sweep.as_run) if pending else None

        if not pending:
            _log(launch_line(f"all {len(trials)} trials of {args.file} are recorded in {store.path}; "
                      f"nothing to run (--fresh runs them again)"))
        progress = experiment.Progress(len(trials), len(trials) - pending)
        checkpoints = os.path.join(folder, "checkpoints")
        os.makedirs(checkpoints, exist_ok=True)
        try:
            options = Options(Recovery.of(args), checkpoints, sweep_file=sweep_file, stop=sweep.stop)
            ended = _run(todo, address, options, store, progress, launch=bool(pending))
        finally:
            progress.close()
        if isinstance(ended, int):
            return ended
        return _show_results(ended.outcome.records, folder, args.json, sys.stdout, ended.outcome.restarts)


def _user_program(argv: List[str]) -> int:
    from ymxb.driver.echo import Echo
    from ymxb.spec.program import user_call

    ours, theirs = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args, extra = _run_parser().parse_known_args(ours)
    if extra:
        raise UsageError(f"unrecognized arguments: {' '.join(extra)}; the program's own arguments go "
                         f"after -- (see {PROG} run --help)")
    spec = SliceSpec.of(argparse.Namespace(**{**vars(args), "address": _address(args.address)}))
    recovery = Recovery.resolve(max_restarts=args.max_restarts, max_preemptions=args.max_preemptions)
    call = user_call(args.target, theirs, args.checkpoint_dir)
    for folder, flag in ((args.out, "--out"), (args.checkpoint_dir, "--checkpoint-dir")):
        if folder:
            _check_folder(folder, "files", flag)
    if args.dry_run:
        shape = plans.known_shape(spec)
        print(f"dry run: {call.target} on {shape.label() if shape.shaped else 'a slice the cluster shapes'}; "
              f"nothing started")
        return 0
    started = time.perf_counter()

    def program(stdout) -> experiment.UserOutcome:
        echo = Echo(None if args.json else stdout, sys.stderr, args.quiet_hosts, args.out)
        try:
            return experiment.run_user(spec, recovery, call, echo, _log)
        finally:
            echo.close()

    ended = _on_cluster(spec.address, _log, program)
    if isinstance(ended, int):
        return ended
    outcome, _ = ended
    codes = [end.exit_code for end in outcome.ends]
    others = {h: c for h, c in enumerate(codes) if c != codes[0]}
    if others:
        _log(launch_line("the program's exit code differs on " + ", ".join(f"host {h} ({c})" for h, c in others.items())
                         + f"; the exit code is host 0's ({codes[0]})"))
    if args.json:
        print(json.dumps({"target": call.target, "exit_code": codes[0], "wall_s": time.perf_counter() - started,
                          "hosts": [{"host": h.host_index, "node_ip": h.node_ip, "pid": h.pid, "exit_code": e.exit_code,
                                     "value": _plain(e.value)} for h, e in zip(outcome.hosts, outcome.ends)],
                          "restarts": [dataclasses.asdict(r) for r in outcome.restarts],
                          "phases_s": outcome.phases}, indent=1), flush=True)
    elif outcome.ends[0].value is not None:
        print(repr(outcome.ends[0].value), flush=True)
    return codes[0]


def _plain(value):
    """`value` as JSON holds it, else its repr."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _dry_run(todo: plans.Plan) -> int:
    """What a plan would run, in a line on stdout; nothing is started."""
    known = todo.known_programs()
    later = sum(1 for g in todo.groups if g.parts is None)
    slices = sorted({g.slice.label() if g.slice.shaped else "a slice the cluster shapes" for g in todo.groups})
    programs = f"{len(known)} programs" + (f" (and {later} groups shaped on the cluster)" if later else "")
    print(f"dry run: {todo.pending} of {len(todo.trials)} trials to run, as {programs} on "
          f"{', '.join(slices) or 'no slice'}; nothing started")
    return 0


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _results(argv: List[str]) -> int:
    args = _results_parser().parse_args(argv)
    if args.json and args.format not in ("table", "json"):
        raise UsageError(f"--json and --format {args.format} ask for two formats: give one")
    store = Store(args.dir)
    if not store.exists():
        raise UsageError(f"{args.dir} holds no results ({DB} missing): give the folder a "
                         f"sweep wrote (its --out, or {RUNS}/<name>)")
    records = list(store.load().values())
    # Kept till the process ends: the garbage collector need never walk them (docs/benchmarks.md).
    gc.freeze()
    metrics = [m.strip() for m in args.best_by.split(",")] if args.best_by else []
    order = args.sort or (query.best_first(metrics[0], records) if metrics and args.top else None)
    shown = query.select(records, args.where, order, args.top)
    best = query.best_by(metrics, records) if metrics else trial_table.default_best
    if args.tensorboard:
        from ymxb.results.views import export

        runs = export.tensorboard(shown, store, args.tensorboard)
        _log(launch_line(f"{len(runs)} trials written for TensorBoard: tensorboard --logdir {args.tensorboard}"))
    if args.format == "csv":  # one list: its best among every trial listed
        sys.stdout.write(query.to_csv(shown, best(shown)))
        return _verdict(shown)
    by = None
    if metrics:
        extreme = "largest" if query.best_first(metrics[0], records).startswith("-") else "smallest"
        by = f"{extreme} {metrics[0]}" if len(metrics) == 1 else f"Pareto front of {', '.join(metrics)}"
    table = functools.partial(trial_table.table, best=best, by=by, grouped=not (args.sort or args.top))
    return _show_results(records, args.dir, args.json or args.format == "json", sys.stdout, shown=shown,
                         table=table, best=best)


def _show_results(records, folder: str, as_json: bool, out, restarts=(), shown=None, table=trial_table.table,
                  best=trial_table.default_best) -> int:
    """The table (`table(shown)`) or JSON of `shown` (default: every record), and the plots of
    every record; with --json, this run's `restarts` too, and the ids of the `best` of `shown`."""
    from ymxb.results.views import plots

    shown = records if shown is None else shown
    store = Store(folder)
    drawn = plots.draw(records, os.path.join(folder, "plots"), source=store)
    kept = os.path.join(folder, params.FOLDER)
    kept = kept if os.path.isdir(kept) else None  # a store written before params were kept has none
    if as_json:
        shown = store.whole(shown)
        doc = {"folder": folder, "store": store.path, "plots": drawn, "params": kept,
               "restarts": [dataclasses.asdict(r) for r in restarts], "best": sorted(best(shown)),
               "trials": [json.loads(r.to_json()) for r in shown]}
        print(json.dumps(doc, indent=1), file=out, flush=True)
    else:
        print(table(shown), file=out)
        where = f"; params: {os.path.join(kept, '<trial_id>.npz')}" if kept else ""
        print(f"records: {store.path}; plots: {', '.join(drawn)}{where}", file=out, flush=True)
    return _verdict(shown)


def _verdict(records) -> int:
    """The exit code of trials shown or run: every one verified (or stopped by a rung, as
    meant), or not."""
    return EXIT_VERIFIED if all(r.verified or r.pruned for r in records) else EXIT_NOT_VERIFIED


@dataclasses.dataclass
class _Ended:
    """A run that ended with a result: its outcome, its wall time, and the seconds the driver
    took to get to it and Ray to come up and to go (`phases`)."""

    outcome: experiment.Outcome
    wall_s: float
    phases: Dict[str, float]


def _run(todo: plans.Plan, address: Optional[str], options: Options, store: Optional[Store] = None,
         progress: Optional[experiment.Progress] = None, launch: bool = True) -> Union[_Ended, int]:
    """Run the plan `todo` as `options` say (`launch`: on a Ray cluster, else none is needed),
    stdout kept for the result (printed by the caller once the run ended); the exit code where
    it ended without one."""
    log = progress.log if progress else _log
    started = time.perf_counter()
    phases = {"driver": _process_age_s()}
    ended = _on_cluster(address, log, lambda stdout: experiment.run(todo, store, log, progress, options), launch)
    if isinstance(ended, int):
        return ended
    outcome, ray_phases = ended
    return _Ended(outcome, time.perf_counter() - started, {**phases, **ray_phases})


def _on_cluster(address: Optional[str], log, work, launch: bool = True):
    """`work(stdout)` on a Ray cluster (`launch`: else none is needed), stdout kept for the
    result (`stdout`: the real one, for what must go there while the run lasts), SIGTERM as
    Ctrl-C: (what it returned, Ray's phases), or the exit code where the run ended without one."""
    with _stdout_kept_for_result() as stdout, _sigterm_as_interrupt() as signals:
        try:
            with ray_cluster(address, log) if launch else contextlib.nullcontext({}) as ray_phases:
                return work(stdout), ray_phases
        except HostFailure as err:
            log(launch_line(f"error: {err}"))
            return EXIT_RAISED if err.cause is Cause.RAISED else EXIT_FAILED
        except KeyboardInterrupt:
            if signals.terminated:
                log(launch_line("terminated; all hosts stopped"))
                return EXIT_TERMINATED
            log(launch_line("interrupted; all hosts stopped"))
            return EXIT_INTERRUPTED


def _process_age_s() -> float:
    """Seconds since this process started (Linux: /proc), interpreter start-up included."""
    started_ticks = int(start_time(os.getpid()))
    with open("/proc/uptime") as f:
        uptime_s = float(f.read().split()[0])
    return uptime_s - started_ticks / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM is handled as Ctrl-C is (every host stopped), then said apart by `.terminated`.
    A flag, not an exception type: Ray re-raises a KeyboardInterrupt of its own from ray.get."""
    signals = types.SimpleNamespace(terminated=False)

    def handler(signum, frame):
        signals.terminated = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield signals
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _stdout_kept_for_result():
    """Stdout carries the result alone: whatever else writes to file descriptor 1 while the
    run lasts (Ray's "(raylet) ..." lines, processes Ray starts) goes to stderr instead. Yields
    the real stdout, for what must go there while the run lasts (a user program's host 0)."""
    sys.stdout.flush()
    kept = os.dup(1)
    os.dup2(2, 1)
    real = os.fdopen(os.dup(kept), "w", buffering=1)
    try:
        yield real
    finally:
        real.close()
        sys.stdout.flush()
        os.dup2(kept, 1)
        os.close(kept)


def _check_writable(flag: str, path: str) -> None:
    """Fail before the run, not after it, when a file it writes (`flag`'s) cannot be written as given."""
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path!r} is a folder; give a file path such as {os.path.join(path, 'data.npz')!r}")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UsageError(f"cannot write {flag} {path!r}: {err.strerror} ({folder}); "
                         f"choose a path in a writable folder") from None


def _check_folder(path: str, what: str = "results", flag: str = "--out") -> None:
    """Fail before the run, not after its first program, when a folder cannot be written."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as err:
        raise UsageError(f"cannot write {what} to {path!r}: {err.strerror}; choose a writable "
                         f"folder with {flag}") from None
