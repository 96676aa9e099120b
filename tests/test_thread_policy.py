"""fimo.threads: final training and the methods compute on one torch thread per core the other
processes leave free (at least one), unless run.threads or FIMO_THREADS say otherwise; the
other processes' load is what runs now (Linux's /proc, weighted by the scheduler's priorities)
or else the load average; the choice is recorded in the manifest, torch's former count comes
back afterwards, and the scores do not depend on it beyond float rounding."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch

import fimo.experiments.pipeline as pipeline
import fimo.threads as threads_module
from fimo import ArrayDataset, Task
from fimo.cli import main
from fimo.errors import InputError
from fimo.experiments.attribute import attribute
from fimo.experiments.config import Config, load_config, with_overrides
from fimo.further.threads import torch_threads
from fimo.methods import get_method
from fimo.models import mlp
from fimo.threads import (
    Runnable,
    ThreadChoice,
    applied,
    choose_threads,
    chosen_threads,
    cores_taken,
    nices_as_met,
    others_now,
    runnable_now,
    threads_for,
)


@pytest.mark.parametrize(
    "cores, load, chosen, expected",
    [
        (2, 0.0, None, 2),  # idle: every core
        (2, 0.49, None, 2),  # a core used less than half by others still counts as free
        (2, 0.51, None, 1),
        (2, 1.0, None, 1),
        (2, 3.7, None, 1),  # more jobs than cores: still one thread
        (1, 0.0, None, 1),
        (8, 2.2, None, 6),
        (8, 2.6, None, 5),
        (8, 0.0, None, 8),
        (8, 20.0, None, 1),
        (2, 3.7, 2, 2),  # the user's count wins, loaded or not
        (2, 0.0, 1, 1),
        (2, 0.0, 4, 4),  # even above the cores: the user may know better
    ],
)
def test_policy_table(cores, load, chosen, expected):
    assert threads_for(cores, load, chosen) == expected


#: the kernel's weights (kernel/sched/core.c, sched_prio_to_weight) for the nice values used below
KERNEL_WEIGHT = {-5: 3121, 0: 1024, 3: 526, 5: 335, 10: 110, 19: 15}


def kernel_cores(others, ours=0):
    """cores_taken's rule computed from the kernel's own weights: each thread keeps
    w / (w + u) of a core shared with ours, counted against an equal thread's half, at most 1."""
    u = KERNEL_WEIGHT[ours]
    return sum(min(1.0, 2 * KERNEL_WEIGHT[n] / (KERNEL_WEIGHT[n] + u)) for n in others)


@pytest.mark.parametrize(
    "others, ours, threads_on_2_cores",
    [
        ([0], 0, 1),  # an equal busy thread: one core, as in the load average
        ([0, 0, 0], 0, 1),
        ([19], 0, 2),  # nice 19 keeps 1.4 % of a core: the core is ours
        ([19, 19, 19], 0, 2),  # three background jobs at nice 19
        ([10], 0, 2),
        ([5], 0, 2),  # 0.49: the last nice below half a core
        ([3], 0, 1),
        ([0, 19], 0, 1),
        ([-5], 0, 1),  # above our priority: still one core (it holds one)
        ([19], 19, 1),  # we are niced as well: equal again
        ([0], 10, 1),
        ([19], 10, 2),
        ([0], -5, 2),  # we outrank it: it keeps 25 % of a shared core
    ],
)
def test_cores_taken_weights_each_thread_by_its_share_of_a_core(others, ours, threads_on_2_cores):
    figure = cores_taken(others, ours)
    assert figure == pytest.approx(kernel_cores(others, ours), rel=0.02)
    assert threads_for(2, figure) == threads_on_2_cores
    if all(nice == ours for nice in others):  # equal priorities: the load average's count
        assert figure == len(others)


def test_a_thread_in_another_group_competes_with_its_groups_weight():
    mine = Runnable(0, "session 1", 0)

    def direct(thread_weight, group_weight, group_total, our_group_weight=1024):
        """One thread's cores from the group weights: its share of its group's weight,
        against our group's, counted as cores_taken counts."""
        r = group_weight * thread_weight / group_total / our_group_weight
        return min(1.0, 2 * r / (1 + r))

    # same session: its own nice; another session at nice 0: a full core whatever its nice
    same, other = Runnable(19, "session 1", 0), Runnable(19, "session 2", 0)
    assert cores_taken(nices_as_met([same], mine)) == pytest.approx(kernel_cores([19]), rel=0.02)
    assert cores_taken(nices_as_met([other], mine)) == pytest.approx(direct(15, 1024, 15))
    assert direct(15, 1024, 15) == 1.0
    # three runnable threads of one other session share its weight: half a core each
    three = [Runnable(19, "session 2", 0)] * 3
    assert cores_taken(nices_as_met(three, mine)) == pytest.approx(3 * direct(15, 1024, 45))
    assert threads_for(2, cores_taken(nices_as_met(three, mine))) == 1
    # a session reniced to 10 as a whole, and one thread at 0 beside two at 19 in it
    group = [Runnable(0, "session 3", 10), Runnable(19, "session 3", 10)]
    total = 1024 + 15
    expected = direct(1024, 110, total) + direct(15, 110, total)
    assert cores_taken(nices_as_met(group, mine)) == pytest.approx(expected, rel=0.02)
    # our thread at nice 19 in a nice-0 session: another session's thread is an equal
    niced = Runnable(19, "session 1", 0)
    assert cores_taken(nices_as_met([Runnable(0, "session 2", 0)], niced), niced.nice) == 1.0
    assert cores_taken(nices_as_met([Runnable(0, "session 1", 0)], niced), niced.nice) == 1.0


def write_process(proc: Path, pid: int, threads, cgroup="1:cpu:/", autogroup="/autogroup-1 nice 0"):
    """A process in a made-up /proc: ``threads`` maps thread ids to their stat text."""
    for tid, stat in threads.items():
        (proc / str(pid) / "task" / str(tid)).mkdir(parents=True)
        if stat is not None:
            (proc / str(pid) / "task" / str(tid) / "stat").write_text(stat)
    (proc / str(pid) / "cgroup").write_text(cgroup + "\n")
    (proc / str(pid) / "autogroup").write_text(autogroup + "\n" if autogroup else "")


def stat(tid: int, state: str, nice: int, name: str = "python") -> str:
    """A /proc stat line: pid (name) state, then 15 fields up to the nice (the 19th field)."""
    return f"{tid} ({name}) {state} " + " ".join(["0"] * 15) + f" {nice} 1 0 0\n"


@pytest.fixture
def fake_proc(tmp_path, monkeypatch):
    """A /proc with this process (one running thread), and others in autogroup 1 (ours),
    autogroup 2, a container's cgroup, the root group, and ones that ended mid-look;
    /proc/loadavg counts two running threads more than it shows."""
    proc = tmp_path / "proc"
    me = os.getpid()
    write_process(proc, me, {me: stat(me, "R", 0)})
    (proc / "self").mkdir()
    (proc / "self/cgroup").write_text("1:cpu:/\n")
    (proc / "self/autogroup").write_text("/autogroup-1 nice 0\n")
    write_process(proc, 100, {100: stat(100, "R", 0, name="a) S (b")})  # a name to trip parsing
    write_process(proc, 101, {101: stat(101, "R", 19), 102: stat(102, "S", 0)})
    write_process(proc, 103, {103: stat(103, "R", 19)}, autogroup="/autogroup-2 nice 0")
    write_process(proc, 104, {104: stat(104, "R", 19)}, cgroup="1:cpu:/docker/7")
    write_process(proc, 105, {105: None})  # ended between listing and reading
    (proc / "106").mkdir()  # ended before its threads were listed
    write_process(proc, 107, {107: stat(107, "R", -5)}, autogroup="")  # the root group
    write_process(proc, 108, {108: "108 (x"})  # cut short
    write_process(proc, 109, {109: stat(109, "D", 0)})  # waits on a disk: not runnable
    shown = 6  # this process's thread, 100, 101, 103, 104, 107
    (proc / "loadavg").write_text(f"3.00 2.00 1.00 {shown + 2}/300 4242\n")
    (proc / "sys/kernel").mkdir(parents=True)
    (proc / "sys/kernel/sched_autogroup_enabled").write_text("1\n")
    monkeypatch.setattr(threads_module, "PROC", proc)
    monkeypatch.setattr(threads_module.os, "getpriority", lambda which, who: 0)
    return proc


def test_the_sampler_reads_each_runnable_thread_its_group_and_the_unseen(fake_proc):
    # 100 our group at 0: 1; 101 our group at 19: its share; 103 another autogroup: 1;
    # 104 a container (the default weight): 1; 107 root group at -5 against our group: 1;
    # two running threads /proc does not show: 1 each
    expected = 1 + kernel_cores([19]) + 1 + 1 + 1 + 2
    assert runnable_now(snapshots=2, window=0.0) == pytest.approx(expected, abs=1e-3)
    (fake_proc / "sys/kernel/sched_autogroup_enabled").write_text("0\n")
    # without autogroups, 101 and 103 compete at their own nice (19) against ours (0)
    expected = 1 + 2 * kernel_cores([19]) + 1 + 1 + 2
    assert runnable_now(snapshots=1) == pytest.approx(expected, abs=1e-3)
    (fake_proc / "loadavg").write_text("3.00 2.00 1.00 2/300 4242\n")  # fewer than shown
    assert runnable_now(snapshots=1) == pytest.approx(expected - 2, abs=1e-3)


def test_the_choice_uses_what_runs_now_where_there_is_a_proc(fake_proc, monkeypatch):
    monkeypatch.setattr(threads_module, "available_cores", lambda: 8)
    monkeypatch.setattr(threads_module.os, "getloadavg", lambda: (30.0, 0.0, 0.0))  # unused
    monkeypatch.delenv("FIMO_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    figure = 1 + kernel_cores([19]) + 3 + 2  # as in the test above
    choice = choose_threads()
    assert choice.load_of_others == pytest.approx(figure, abs=0.01)
    assert (choice.threads, choice.chosen_by, choice.measured_by) == (2, "load", "runnable now")
    assert choice.describe().startswith("torch threads: 2 of 8 cores (other processes keep 6.0")
    (fake_proc / "loadavg").unlink()  # not a Linux /proc after all: the load average
    assert choose_threads().measured_by == "load average"
    assert choose_threads().threads == 1


#: a busy loop at the nice given as its argument, which says when it has set it
BUSY = "import os, sys\nos.nice(int(sys.argv[1]))\nprint('ready', flush=True)\nwhile True: pass"


def thread_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as file:
        return file.read().rpartition(")")[2].split()[0]


def wait_for_state(pid: int, states: str) -> None:
    deadline = time.monotonic() + 30
    while thread_state(pid) not in states:
        assert time.monotonic() < deadline, f"process {pid} never reached state {states}"
        time.sleep(0.002)


def what_a_child_adds(nice: int, new_session: bool = False):
    """What a busy-loop child at ``nice`` adds to the sampled figure: in each round, a pass
    with the child running less one with it stopped (SIGSTOP), close in time so that the
    machine's other processes are the same in both (mostly: their threads come and go); the
    median over 31 rounds, and how wide a 97 % interval for that median is (the 10th and the
    22nd of the 31 differences in order, which hold the median between them unless 22 of 31
    rounds fall on one side of it: probability 2 × 1.5 %)."""
    child = subprocess.Popen(
        [sys.executable, "-c", BUSY, str(nice)],
        stdout=subprocess.PIPE,
        start_new_session=new_session,
    )
    try:
        assert child.stdout.readline() == b"ready\n"
        differences = []
        for round_ in range(31):
            figure = {}
            for state in "TR" if round_ % 2 else "RT":  # either order: a trend cancels
                os.kill(child.pid, signal.SIGSTOP if state == "T" else signal.SIGCONT)
                wait_for_state(child.pid, state)
                figure[state] = runnable_now(snapshots=1)
            differences.append(figure["R"] - figure["T"])
    finally:
        child.kill()
        child.wait()
    ordered = sorted(differences)
    return ordered[15], ordered[21] - ordered[9]


def skip_if_unsure(width: float, limit: float, what: str) -> None:
    """Skip when the interval for the child's part is wider than ``limit``: the machine's
    other processes' threads came and went too often for ``what`` to be told apart."""
    if width > limit:
        pytest.skip(
            f"other processes' runnable threads came and went too often (the interval for "
            f"the child's part is {width:.2f} wide): {what} cannot be told apart"
        )


linux_only = pytest.mark.skipif(not Path("/proc/loadavg").exists(), reason="samples Linux's /proc")


@linux_only
def test_a_busy_process_at_nice_0_counts_one_core():
    added, width = what_a_child_adds(0)
    skip_if_unsure(width, 0.5, "one more busy thread")
    assert 0.7 <= added <= 1.5
    assert threads_for(2, added) == 1


@linux_only
def test_a_busy_process_at_nice_19_in_our_session_counts_next_to_nothing():
    ours = os.getpriority(os.PRIO_PROCESS, 0)  # pytest itself may run under `nice`
    if ours > 5:
        pytest.skip(f"this process runs at nice {ours}: a nice-19 thread is not far below it")
    expected = cores_taken([19], ours=ours)  # 0.028 at nice 0, 0.074 at nice 5
    added, width = what_a_child_adds(19)
    skip_if_unsure(width, 0.2, "a nice-19 thread's share from 0.1")
    assert expected - 0.05 <= added < expected + 0.07
    assert threads_for(2, added) == 2


@linux_only
def test_a_busy_process_at_nice_19_in_another_session_counts_one_core():
    if Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() != "1":
        pytest.skip("autogroups are off here: a nice-19 process competes at its own nice")
    added, width = what_a_child_adds(19, new_session=True)
    skip_if_unsure(width, 0.5, "one more busy thread")
    assert 0.7 <= added <= 1.5


def test_the_setting_beats_the_environment_which_beats_the_policy():
    both = {"FIMO_THREADS": "1", "OMP_NUM_THREADS": "3"}
    assert chosen_threads(3, both) == (3, "run.threads")
    assert chosen_threads(0, both) == (1, "FIMO_THREADS")
    assert chosen_threads(0, {"FIMO_THREADS": " 2 "}) == (2, "FIMO_THREADS")
    assert chosen_threads(0, {"FIMO_THREADS": "", "OMP_NUM_THREADS": "3"}) == (3, "OMP_NUM_THREADS")
    for ignored in ("", "4,2", "0"):  # not a count of ours to check: OpenMP reads it
        assert chosen_threads(0, {"OMP_NUM_THREADS": ignored}) is None
    assert chosen_threads(0, {}) is None
    for bad in ("0", "-1", "1.5", "auto"):
        with pytest.raises(InputError, match=f"FIMO_THREADS: got '{bad}'; must be a whole"):
            chosen_threads(0, {"FIMO_THREADS": bad})
    with pytest.raises(InputError, match=r"run.threads: got -1; must be ≥ 1"):
        chosen_threads(-1, {})


def test_run_threads_and_the_command_lines_threads_are_checked_at_the_door(tmp_path, capsys):
    assert with_overrides(Config(), threads=3).run.threads == 3
    assert with_overrides(Config(), threads=None).run.threads == 0  # 0: from the load
    with pytest.raises(InputError, match=r"run.threads: got -1; must be ≥ 1 \(or 0"):
        with_overrides(Config(), threads=-1)
    assert main(["run", "concrete", "--threads", "-1", "--out", str(tmp_path / "r")]) == 2
    assert "run.threads: got -1" in capsys.readouterr().err


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A 2-core machine without /proc whose load average the test sets; this process has used
    6 CPU seconds (0.1 of the load is its own)."""
    state = {"load": 0.0}
    monkeypatch.setattr(threads_module, "PROC", tmp_path / "no-proc")
    monkeypatch.setattr(threads_module, "available_cores", lambda: 2)
    monkeypatch.setattr(threads_module.os, "getloadavg", lambda: (state["load"], 0.0, 0.0))
    monkeypatch.setattr(threads_module.time, "process_time", lambda: 6.0)
    monkeypatch.delenv("FIMO_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    return state


def test_the_choice_reads_the_cores_and_the_load_less_this_process(machine, monkeypatch):
    machine["load"] = 0.55  # 0.45 of it from others: the second core counts as free
    assert choose_threads() == ThreadChoice(2, "load", 2, 0.45, "load average")
    machine["load"] = 3.8
    assert choose_threads() == ThreadChoice(1, "load", 2, 3.7, "load average")
    assert choose_threads(2) == ThreadChoice(2, "run.threads", 2, 3.7, "load average")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads() == ThreadChoice(2, "OMP_NUM_THREADS", 2, 3.7, "load average")
    monkeypatch.setenv("FIMO_THREADS", "1")
    assert choose_threads() == ThreadChoice(1, "FIMO_THREADS", 2, 3.7, "load average")
    monkeypatch.delattr(threads_module.os, "getloadavg")  # Windows: no load average
    assert others_now() == (0.0, "load average")


def test_applied_sets_the_count_restores_it_and_says_so_only_when_it_changes():
    said = []
    with torch_threads(2):
        loaded = ThreadChoice(1, "load", 2, 3.0, "runnable now")
        with pytest.raises(RuntimeError), applied(loaded, said.append):
            assert torch.get_num_threads() == 1
            raise RuntimeError  # restored on the way out of an error too
        assert torch.get_num_threads() == 2
        with applied(ThreadChoice(2, "load", 2, 0.0, "runnable now"), said.append):
            assert torch.get_num_threads() == 2
    assert said == [
        "torch threads: 1 of 2 cores (other processes keep 3.0 busy, runnable now; "
        "set FIMO_THREADS to choose)"
    ]


#: 40 Concrete instances: a run of a few seconds
TINY = {
    "name": "tiny",
    "data": {"dataset": "concrete", "n_train": 40, "n_test": 4},
    "model": {"hidden": [6]},
    "training": {"epochs": 2, "batch_size": 16, "lr": 0.1},
    "further": {"seeds": 1, "left_out": 2, "epochs": 1, "batch_size": 16, "lr": 0.05},
    "methods": {"names": ["grad_dot"], "train": "left_out"},
}


def test_a_run_trains_and_scores_on_the_chosen_threads_and_records_them(
    tmp_path, machine, monkeypatch
):
    seen = {}

    def recording(name, real):
        def wrapper(*args, **kwargs):
            seen[name] = torch.get_num_threads()
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(pipeline, "train_final", recording("final", pipeline.train_final))
    monkeypatch.setattr(pipeline, "_run_method", recording("method", pipeline._run_method))
    config = tmp_path / "tiny.toml"
    config.write_text(tomli_w.dumps(TINY))
    machine["load"] = 3.1  # others hold both cores
    with torch_threads(2):
        pipeline.run(load_config(config), tmp_path / "run", quiet=True)
        assert torch.get_num_threads() == 2
    assert seen == {"final": 1, "method": 1}
    record = json.loads((tmp_path / "run/manifest.json").read_text())["torch_threads"]
    assert record == {
        "threads": 1,
        "chosen_by": "load",
        "cores": 2,
        "load_of_others": 3.0,
        "measured_by": "load average",
    }
    # idle: the methods take both cores, final training still one thread (the same weights
    # under any load), so a final model trained again is the same bit for bit
    machine["load"] = 0.0
    seen.clear()
    with torch_threads(1):
        pipeline.run(load_config(config), tmp_path / "idle", quiet=True)
    assert seen == {"final": 1, "method": 2}
    loaded = torch.load(tmp_path / "run/model/final.pt", weights_only=True)
    idle = torch.load(tmp_path / "idle/model/final.pt", weights_only=True)
    assert all(torch.equal(loaded[k], idle[k]) for k in loaded)
    machine["load"] = 3.1
    seen.clear()
    pipeline.run(with_overrides(load_config(config), threads=2), tmp_path / "two", quiet=True)
    assert seen == {"final": 2, "method": 2}  # the user's count: final training too


def regression_task() -> Task:
    """Large enough for torch to split its products over two threads (64-wide layers,
    2,000 training instances)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 20, generator=g)
    y = x[:, :1] - x[:, 1:2] ** 2 + 0.1 * torch.randn(2000, 1, generator=g)
    data = ArrayDataset(x, y)
    return Task(mlp(20, 1, hidden=(64, 64), seed=0), data, ArrayDataset(x[:30], y[:30]), "mse")


@pytest.mark.parametrize(
    "name, n_test, settings",
    [("grad_dot", 30, {}), ("cg", 3, {"damping": 1.0, "max_iter": 20, "hessian_samples": 300})],
)
def test_scores_agree_on_one_thread_and_two(name, n_test, settings):
    task, test, train = regression_task(), np.arange(n_test), np.arange(2000)
    values = []
    for threads in (1, 2):
        with torch_threads(threads):
            values.append(get_method(name)(task, test, train, **settings).values)
    scale = np.abs(values[0]).max()
    assert scale > 0
    assert np.abs(values[0] - values[1]).max() <= 1e-6 * scale


def test_attribute_records_the_threads_it_computed_on():
    x = torch.linspace(-1, 1, 16).reshape(8, 2)
    data = ArrayDataset(x, x.sum(1))
    task = Task(torch.nn.Linear(2, 1), data, data, loss="mse")
    result = attribute(task, [0], method="grad_dot", threads=1, quiet=True)
    record = result.scores.settings["attribute"]["torch_threads"]
    assert record["threads"] == 1 and record["chosen_by"] == "run.threads"
