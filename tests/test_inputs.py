"""Every user value ends in a result or in one line, never in a traceback or a hang, by property:
hypothesis feeds every flag of `launch.py` and `launch.py sweep` (as their parsers list them) and
every key of a sweep file (its slice, base, grid, trials, sample: and stop: blocks) extreme and
malformed values: huge integers, inf, nan, negatives, empty, the wrong type. Each example is a
`--dry-run` in this process: the plan is made and checked as for a run, nothing is started."""

import signal

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from ymxb import cli
from ymxb.spec import registry, sampling, stopping, sweep
from ymxb.spec.settings import TrialSpec

HANG_S = 120  # far past what a dry run takes: an example still running then is a hang

TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
# What a user can type: argv is text (argparse converts it), and no byte of it is NUL.
TYPED = st.one_of(
    st.sampled_from(["0", "-1", "1", "2", "1e400", "-1e400", "inf", "-inf", "nan", "1e-400", "1.5", "", " ",
                     "99999999999999999999999", "-99999999999999999999999", "2147483648", "4294967296", "true",
                     "null", "[]", "0x10", "1_000", "１"]),
    st.integers(-10**30, 10**30).map(str),
    st.floats().map(repr),
    TEXT)
# What a YAML file can hold, of every type.
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(), TEXT,
                   st.sampled_from([0, -1, 1, 2**31, 2**32, 2**64, float("inf"), float("nan"), "1e400", ""]))
WRITTEN = st.one_of(SCALAR, st.lists(SCALAR, max_size=3), st.dictionaries(TEXT, SCALAR, max_size=2))


def _flags(argv_prefix=()):
    """(option, takes a value) of every flag the parser of `launch.py` has (the default task's
    and linreg's settings included), but --help."""
    found = {}
    for task in ("ymxb", "linreg"):
        for action in cli._parser(cli.PROG, registry.get(task))._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    found[option] = action.nargs != 0
    return sorted(found.items())


def _sweep_flags():
    return sorted({o: a.nargs != 0 for a in cli._sweep_parser()._actions for o in a.option_strings
                   if o.startswith("--") and o not in ("--help", "--dry-run", "--out")}.items())


def _clean_exit(argv, capsys):
    """Run `launch.py ARGV` here; assert it ends 0, 1 or 2, and a 2 in one line with no traceback."""
    signal.alarm(HANG_S)
    try:
        code = cli.main(argv)
    finally:
        signal.alarm(0)
    out, err = capsys.readouterr()
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err + out, (argv, err)
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("launch.py: error: "), (argv, err)


@pytest.fixture(autouse=True)
def _alarm_raises():
    def hung(signum, frame):
        raise AssertionError(f"no answer within {HANG_S} s: a hang")

    previous = signal.signal(signal.SIGALRM, hung)
    yield
    signal.signal(signal.SIGALRM, previous)


PROPERTY = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@PROPERTY
@given(st.lists(st.tuples(st.sampled_from(_flags()), TYPED), min_size=1, max_size=3), st.booleans())
def test_every_flag_of_a_run_with_any_value_ends_cleanly(tmp_path, capsys, chosen, linreg):
    argv = ["--task", "linreg"] if linreg else []
    for (option, takes_value), value in chosen:
        argv += [option, value] if takes_value else [option]
    _clean_exit(argv + ["--dry-run"], capsys)


def _trial_keys():
    return sorted(set(TrialSpec.keys("ymxb")) | set(TrialSpec.keys("linreg")) | {"task"})


SECTIONS = {
    "slice": st.dictionaries(st.sampled_from(sweep.SLICE_KEYS), WRITTEN, max_size=2),
    "base": st.dictionaries(st.sampled_from(_trial_keys() + list(sweep.SHAPE_KEYS)), WRITTEN, max_size=2),
    "grid": st.dictionaries(st.sampled_from(_trial_keys() + list(sweep.SHAPE_KEYS)),
                            st.one_of(st.lists(SCALAR, min_size=1, max_size=3), WRITTEN), max_size=2),
    "trials": st.one_of(st.lists(st.dictionaries(st.sampled_from(_trial_keys()), WRITTEN, max_size=2), max_size=2),
                        WRITTEN),
    "sample": st.one_of(st.fixed_dictionaries({
        "count": st.one_of(st.integers(-2, 8), WRITTEN),
        "space": st.dictionaries(st.sampled_from(["lr", "seed", "true_m", "steps"]),
                                 st.dictionaries(st.sampled_from(sampling.DISTRIBUTIONS + ("choice",)),
                                                 st.one_of(st.lists(SCALAR, max_size=3), WRITTEN), max_size=1),
                                 max_size=2)}), WRITTEN),
    "stop": st.one_of(st.dictionaries(st.sampled_from(stopping.KEYS), st.one_of(
        WRITTEN, st.dictionaries(st.sampled_from(stopping.RUNG_KEYS), WRITTEN, max_size=3)), max_size=3), WRITTEN),
    "name": WRITTEN,
}


@PROPERTY
@given(st.fixed_dictionaries({}, optional=SECTIONS),
       st.lists(st.tuples(st.sampled_from(_sweep_flags()), TYPED), max_size=2))
def test_every_key_of_a_sweep_file_with_any_value_ends_cleanly(tmp_path, capsys, doc, chosen):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    argv = ["sweep", str(path), "--dry-run", "--out", str(tmp_path / "out")]
    for (option, takes_value), value in chosen:
        argv += [option, value] if takes_value else [option]
    _clean_exit(argv, capsys)


@PROPERTY
@given(st.text(max_size=200))
def test_a_sweep_file_of_any_text_ends_cleanly(tmp_path, capsys, text):
    path = tmp_path / "sweep.yaml"
    path.write_text(text, errors="surrogatepass")
    _clean_exit(["sweep", str(path), "--dry-run", "--out", str(tmp_path / "out")], capsys)


def _run_flags():
    return sorted({o: a.nargs != 0 for a in cli._run_parser()._actions for o in a.option_strings
                   if o.startswith("--") and o not in ("--help", "--dry-run", "--out", "--checkpoint-dir")}.items())


@PROPERTY
@given(st.lists(st.tuples(st.sampled_from(_run_flags()), TYPED), min_size=1, max_size=3),
       st.sampled_from(["examples/loops/train.py", "ymxb.context:attempt", "", ":", "nope.py", "ymxb:nothing"]))
def test_every_flag_of_launch_py_run_with_any_value_ends_cleanly(capsys, chosen, target):
    argv = ["run", target]
    for (option, takes_value), value in chosen:
        argv += [option, value] if takes_value else [option]
    _clean_exit(argv + ["--dry-run"], capsys)
