"""`launch.py run`: a user's own program on every host of a simulated slice, as real processes
joined by jax.distributed; its output routed as on one machine, its failures named, and a host
killed mid-run resumed from the program's own checkpoint to a bit-identical end."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT, gone, launch, wait_until

PROGRAM = textwrap.dedent("""
    import sys
    import jax
    import ymxb

    jax.distributed.initialize()  # as a script written for a pod calls it: harmless here
    print(f"process {jax.process_index()} of {jax.process_count()}, {jax.device_count()} devices, argv {sys.argv[1:]}")
    print(f"attempt {ymxb.attempt()} on stderr", file=sys.stderr)
    for step in range(3):
        ymxb.report(step, loss=1.0 / (step + 1))
    if "--raise" in sys.argv and jax.process_index() == 1:
        def deep():
            raise ValueError("host 1 is unhappy")
        deep()
    sys.exit(int(sys.argv[-1]))
""")


@pytest.fixture
def program(tmp_path):
    path = tmp_path / "prog.py"
    path.write_text(PROGRAM)
    return path


def test_a_script_runs_on_every_host_with_host_0s_stdout_as_its_own_and_its_exit_code(program, tmp_path):
    result = launch("run", program, "--hosts", 2, "--out", tmp_path / "out", "--", "a b", 3)
    assert result.returncode == 3, result.stderr[-3000:]
    assert result.stdout == "process 0 of 2, 4 devices, argv ['a b', '3']\n"  # host 0's, unprefixed
    assert "[host 1] process 1 of 2, 4 devices, argv ['a b', '3']" in result.stderr
    assert "[host 0] attempt 0 on stderr" in result.stderr and "[host 1] attempt 0 on stderr" in result.stderr
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert sorted((r["host"], r["step"], r["loss"]) for r in rows) == sorted(
        (h, s, 1.0 / (s + 1)) for h in (0, 1) for s in range(3))


def test_a_raising_host_is_named_with_its_own_traceback_and_the_run_exits_1(program):
    result = launch("run", program, "--hosts", 2, "--quiet-hosts", "--", "--raise", 0)
    assert result.returncode == 1, result.stderr[-3000:]
    err = result.stderr
    assert f'File "{program}", line' in err and "in deep" in err and "ValueError: host 1 is unhappy" in err
    assert "ymxb/host" not in err  # its own frames, not ymxb's
    last = err.strip().splitlines()[-1]
    assert last.startswith("launch.py: error: the program failed: host 1 (") and "raised ValueError" in last


def test_a_function_returns_each_hosts_value():
    result = launch("run", "ymxb.context:attempt", "--hosts", 2, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(result.stdout)
    assert [(h["host"], h["value"], h["exit_code"]) for h in doc["hosts"]] == [(0, 0, 0), (1, 0, 0)]


@pytest.mark.parametrize("args,says", [
    (["nope.py"], "no such script: nope.py"),
    (["ymxb.context:ATTEMPT_ENV"], "is not a function"),
    (["ymxb.context:report"], "takes arguments"),
    (["ymxb.context:nothing"], "has no nothing"),
    (["examples/loops/train.py", "--steps", "3"], "the program's own arguments go after --"),
])
def test_bad_usage_is_one_line_before_any_host_starts(args, says):
    result = launch("run", *args)
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def _run(*args):
    return subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "run", "examples/loops/train.py", *map(str, args)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_host_killed_mid_run_is_named_and_the_program_resumes_to_the_same_params(tmp_path):
    steps = ["--", "--steps", 400, "--checkpoint-every", 40]
    plain = launch("run", "examples/loops/train.py", "--hosts", 2, *steps)
    assert plain.returncode == 0, plain.stderr[-3000:]
    run = _run("--hosts", 2, "--max-restarts", 1, "--checkpoint-dir", tmp_path / "ckpt", *steps)
    lines = []
    try:
        for line in run.stderr:
            lines.append(line)
            if line.startswith("[host 1] saving a checkpoint at step 80"):  # step 40's is written
                break
        pid = int(re.search(r"host 1/2: .* pid (\d+)", "".join(lines)).group(1))
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: gone(pid), 30)
        out, rest = run.communicate(timeout=300)
    finally:
        run.kill()
    err = "".join(lines) + rest
    assert run.returncode == 0, err[-3000:]
    assert re.search(rf"host 1 \(127\.0\.0\.1 pid {pid}\) died; restarting the slice \(restart 1 of 1\), running the "
                     r"program again", err), err[-3000:]
    assert "[host 0] attempt 1: resuming from the checkpoint at step" in err
    resumed = re.search(r"^attempt 1: resuming from the checkpoint at step (\d+)$", out, re.M)  # host 0's stdout
    assert resumed and 40 <= int(resumed.group(1)) < 400, out[-3000:]
    assert out.splitlines()[-1] == plain.stdout.splitlines()[-1]  # final loss and params: bit-identical
    assert plain.stdout.splitlines()[-1].startswith("final loss")


@pytest.mark.slow
def test_a_host_that_reported_and_then_stops_is_named_as_hung(tmp_path):
    path = tmp_path / "stuck.py"
    path.write_text("import time, jax, ymxb\n"
                    "ymxb.report(1)\n"
                    "if jax.process_index() == 1:\n"
                    "    time.sleep(3600)\n")
    result = launch("run", path, "--hosts", 2, "--timeout", 20)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert re.match(r"launch.py: error: the program stalled: host 1 \(127\.0\.0\.1 pid \d+\) reported no step "
                    r"\(ymxb.report\) in 20 s \(last at step 1\)", last), last


def test_a_multislice_program_sees_every_slice_and_its_megascale_environment(tmp_path):
    path = tmp_path / "slices.py"
    path.write_text("import os, jax\n"
                    "print(jax.process_index(), jax.process_count(), os.environ['MEGASCALE_NUM_SLICES'], "
                    "os.environ['MEGASCALE_SLICE_ID'])\n")
    result = launch("run", path, "--hosts", 1, "--slices", 2, "--devices-per-host", 1)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "0 2 2 0\n"
    assert "[host 1] 1 2 2 1" in result.stderr
