"""Questions to a results store: which trials (`--where`), in what order (`--sort`, `--top`),
which are best and by what (`--best-by`), and as what (`--format`).

A key is a trial's setting, named as in its `config` (lr, optimizer, hosts, ...), one of
METRICS, or one of its task's metrics (train_accuracy, eval_loss, ...: the mean over its
members; --best-by ranks those the task says are better larger, larger first). `--where` is a
small expression language, parsed with Python's `ast` and never evaluated by it: comparisons
(`== != < <= > >= in`, chains like `0.01<lr<=0.1`, a single `=` meaning `==`) and keys alone
(`verified`) joined by `and`, `or`, `not` and parentheses; a bare word beside a key is a string
(`optimizer==adam`), `true`/`false` are booleans.
"""

import ast
import csv
import io
import math
import operator
import re
from typing import Callable, Dict, List, Optional, Sequence, Set

from ymxb.errors import UsageError
from ymxb.results.record import TrialRecord, larger_first, metric_names
from ymxb.results.views.table import rank

# What a record says of itself beyond its settings; the numeric ones can rank trials (smaller
# is better).
METRICS: Dict[str, Callable[[TrialRecord], object]] = {
    "final_loss": lambda r: r.final_loss,
    "max_error": lambda r: r.max_error if r.solution else math.nan,
    "converged_step": lambda r: r.converged_step(),
    "diverged_step": lambda r: r.diverged_step(),
    "wall_s": lambda r: r.wall_s,
    "stopped_at": lambda r: r.stopped_at,
    "stopped_by": lambda r: r.stopped_by,
    "members": lambda r: len(r.members),
    "verified": lambda r: r.verified,
    "diverged": lambda r: r.diverged,
    "trial_id": lambda r: r.trial_id,
    "group": lambda r: r.group,
    "slice": lambda r: r.slice,
    "sweep_file": lambda r: r.sweep_file,
}
RANKING = ("final_loss", "max_error", "converged_step", "wall_s")
FORMATS = ("table", "csv", "json")
_OPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
        ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
        ast.NotIn: lambda a, b: a not in b}
_WORDS = {"true": True, "false": False, "null": None, "none": None}


def value(record: TrialRecord, key: str):
    """The record's value of `key` (one of METRICS, else its task's metric, else a setting;
    None where it has none)."""
    if key in METRICS:
        return METRICS[key](record)
    return record.metrics[key] if key in record.metrics else record.config.get(key)


def keys(records: Sequence[TrialRecord]) -> List[str]:
    """Every key a question may name: METRICS, the tasks' metrics, then every setting the
    records have."""
    # A program's trials have the same settings and metrics: one of each program is enough to ask.
    settings = dict.fromkeys(k for config in {r.group: r.config for r in records}.values() for k in config)
    return list(METRICS) + [k for k in {**dict.fromkeys(metric_names(records)), **settings} if k not in METRICS]


def best_first(key: str, records: Sequence[TrialRecord]) -> str:
    """The --sort that puts the best by `key` first: `-key` for a metric ranked larger first."""
    return f"-{key}" if larger_first(key, records) else key


def where(text: str, known: Sequence[str]) -> Callable[[TrialRecord], bool]:
    """The predicate `--where text` means; UsageError naming what is wrong with it."""
    source = re.sub(r"(?<![=!<>])=(?!=)", "==", text)
    try:
        tree = ast.parse(source, mode="eval").body
    except SyntaxError:
        raise UsageError(f"--where {text!r} is not a condition: write comparisons of a key and a value "
                         "joined by and/or, e.g. --where 'optimizer==adam and lr<0.1'") from None
    _check(tree, text, set(known))
    return _compiled(tree, text, set(known))


def _check(node, text: str, known: Set[str]) -> None:
    """Refuse what the language does not have, and a comparison that names no known key."""
    if isinstance(node, ast.BoolOp):
        for part in node.values:
            _check(part, text, known)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        _check(node.operand, text, known)
    elif isinstance(node, ast.Name) and node.id in known:  # a key alone: `verified`, `not diverged`
        pass
    elif isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        if not all(type(op) in _OPS for op in node.ops):
            raise UsageError(f"--where {text!r}: compare with == != < <= > >= in, not {ast.unparse(node)!r}")
        for operand in operands:
            _literal_or_key(operand, text)
        names = [o.id for o in operands if isinstance(o, ast.Name) and o.id.lower() not in _WORDS]
        if not any(n in known for n in names):
            unknown = names[0] if names else ast.unparse(node)
            raise UsageError(f"--where {text!r}: {unknown!r} is not a key of these trials; keys: "
                             f"{', '.join(sorted(known))}")
    else:
        raise UsageError(f"--where {text!r}: {ast.unparse(node)!r} is not a comparison (key OP value)")


def _literal_or_key(node, text: str) -> None:
    if isinstance(node, (ast.Name, ast.Constant)):
        return
    if isinstance(node, (ast.List, ast.Tuple)) and all(isinstance(e, (ast.Name, ast.Constant)) for e in node.elts):
        return
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return
    raise UsageError(f"--where {text!r}: {ast.unparse(node)!r} is neither a key nor a value (quote strings "
                     "with - or spaces in them: platform=='cpu-sim')")


def _compiled(node, text: str, known: Set[str]) -> Callable[[TrialRecord], bool]:
    """The checked condition as a function of a record, made once (10^5 records: 4x faster
    than walking the tree for each)."""
    if isinstance(node, ast.BoolOp):
        parts = [_compiled(v, text, known) for v in node.values]
        if isinstance(node.op, ast.And):
            return lambda record: all(part(record) for part in parts)
        return lambda record: any(part(record) for part in parts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = _compiled(node.operand, text, known)
        return lambda record: not inner(record)
    if isinstance(node, ast.Name):
        get = _operand(node, known)
        return lambda record: bool(get(record))
    getters = [_operand(o, known) for o in (node.left, *node.comparators)]
    ops = [_OPS[type(op)] for op in node.ops]

    def holds(record) -> bool:
        operands = [get(record) for get in getters]
        return all(_compare(op, a, b, node, text) for op, a, b in zip(ops, operands, operands[1:]))

    return holds


def _operand(node, known: Set[str]) -> Callable[[TrialRecord], object]:
    """An operand as a function of a record: a key's value, or a constant (a bare word that is
    no key is a string: optimizer==adam)."""
    if isinstance(node, ast.Name):
        if node.id in known:
            return lambda record: value(record, node.id)
        word = node.id.lower()
        constant = _WORDS[word] if word in _WORDS else node.id
    elif isinstance(node, (ast.List, ast.Tuple)):
        parts = [_operand(e, known) for e in node.elts]
        return lambda record: [part(record) for part in parts]
    else:
        constant = ast.literal_eval(node)
    return lambda record: constant


def _compare(op, a, b, node, text: str) -> bool:
    if op in (operator.eq, operator.ne):
        return op(_canonical(a), _canonical(b))
    if _missing(a) or _missing(b):
        return False  # a diverged trial's loss, a step never reached: no order holds
    try:
        return bool(op(a, b))
    except TypeError:
        raise UsageError(f"--where {text!r}: cannot order {a!r} against {b!r} in {ast.unparse(node)!r}") from None


def _canonical(v):
    """A number as a number (`lr==1` matches lr 1.0); anything else as is."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _nan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _missing(v) -> bool:
    return v is None or _nan(v)


def sort(records: Sequence[TrialRecord], key: str) -> List[TrialRecord]:
    """`records` ordered by `key` (`-key`: largest first); trials without a value of it (a
    diverged loss, a step never reached) last either way."""
    descending, key = key.startswith("-"), key.lstrip("-")
    present = [r for r in records if not _missing(value(r, key))]
    missing = [r for r in records if _missing(value(r, key))]
    try:
        return sorted(present, key=lambda r: value(r, key), reverse=descending) + missing
    except TypeError:
        raise UsageError(f"--sort {key}: its values are of different kinds and have no order") from None


def best_by(metrics: Sequence[str], records: Sequence[TrialRecord]) -> Callable[[Sequence[TrialRecord]], Set[str]]:
    """Which of a set of trials are best: by one metric the smallest (the largest, for a task's
    metric that says so: accuracy), by several every trial no other beats in all of them (the
    Pareto front). Only verified trials are candidates."""
    own = metric_names(records)
    for m in metrics:
        if m not in RANKING and m not in own and not _numeric(m, records):
            raise UsageError(f"--best-by {m!r}: rank by one of {', '.join(RANKING + tuple(own))} (smaller is "
                             "better, or larger where the task says so), or a numeric setting")
    sign = [-1.0 if larger_first(m, records) else 1.0 for m in metrics]

    def best(shown: Sequence[TrialRecord]) -> Set[str]:
        points = {r.trial_id: tuple(s * _rankable(value(r, m), s) for m, s in zip(metrics, sign))
                  for r in shown if r.verified}
        points = {t: p for t, p in points.items() if all(math.isfinite(x) for x in p)}
        if len(metrics) == 1:
            low = min(points.values(), default=None)
            return {t for t, p in points.items() if p == low}
        return _front(points)

    return best


def _front(points: Dict[str, tuple]) -> Set[str]:
    """The ids of the points no other is at least as small as in every metric (and smaller in
    one). In lexicographic order whatever beats a point comes before it, and so does a point of
    the front that beats it: each is checked against the front so far, not against every point."""
    front: List[tuple] = []
    for t, p in sorted(points.items(), key=lambda item: item[1]):
        if not any(q != p and all(x <= y for x, y in zip(q, p)) for _, q in front):
            front.append((t, p))
    return {t for t, _ in front}


def _rankable(v, sign: float = 1.0) -> float:
    """`v` as a number to rank by; a missing one ranks last (`sign` -1: ranked larger first)."""
    return sign * math.inf if v is None else float(v)


def _numeric(key: str, records: Sequence[TrialRecord]) -> bool:
    values = [value(r, key) for r in records]
    return any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _known(key: str, records: Sequence[TrialRecord], flag: str) -> None:
    known = keys(records)
    if key not in known:
        raise UsageError(f"{flag} {key!r} is not a key of these trials; keys: {', '.join(sorted(known))}")


def to_csv(records: Sequence[TrialRecord], best: Set[str]) -> str:
    """One row per trial: its id, where it ran, every setting, the metrics (its task's too), and
    best (1/0)."""
    own = metric_names(records)
    settings = [k for k in keys(records) if k not in METRICS and k not in own]
    columns = ["trial_id", "group", "slice", "sweep_file", *settings, "verified", "diverged", "members",
               "max_error", "final_loss", *own, "converged_step", "diverged_step", "stopped_at", "stopped_by",
               "wall_s", "best"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for r in records:
        row = [value(r, c) for c in columns[:-1]] + [int(r.trial_id in best)]
        writer.writerow(["" if _missing(v) else v for v in row])
    return out.getvalue()


def select(records: Sequence[TrialRecord], condition: Optional[str], order: Optional[str],
           top: Optional[int]) -> List[TrialRecord]:
    """The records `--where`, `--sort` and `--top` leave, in their order (`--top` alone: the
    best first, by max |error|)."""
    chosen = list(records)
    if condition:
        test = where(condition, keys(records))
        chosen = [r for r in chosen if test(r)]
    if order:
        _known(order.lstrip("-"), records, "--sort")
        chosen = sort(chosen, order)
    elif top is not None:
        chosen = sorted(chosen, key=rank)  # the best first, as the table ranks them
    if top is not None:
        if top < 1:
            raise UsageError(f"--top {top}: give how many trials to show, 1 or more")
        chosen = chosen[:top]
    return chosen
