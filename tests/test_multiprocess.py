"""Two processes x 4 CPU devices, as on a pod slice, against one process with 8.

Both processes run the command that launch/gpu.sh gives for several hosts: the same
`python -m cmcd_jax.main ...` with JAX_COORDINATOR_ADDRESS (here 127.0.0.1),
JAX_NUM_PROCESSES and JAX_PROCESS_ID set, without the script's venv set-up; the package
initialises jax.distributed itself and its CPU devices talk through gloo. Process 1 runs
under umask 077, so a file it creates is told apart from process 0's by its mode.

One module-scoped scenario (the runs are the cost): one process with 8 devices runs to the
end (the session's `eight_device_run`, which also runs target_only); two processes start, process 1 gets a SIGTERM mid-distillation, both stop, and the
same two commands are run again to finish.
"""

import json
import signal
import socket
import stat
import subprocess

import pytest

from conftest import MULTI_DEVICE_OVERRIDES, REPO, main_command, wait_for_step

OVERRIDES = ("--config.methods=cmc", *MULTI_DEVICE_OVERRIDES)
STAGES = ("pretrain", "distill/cmc")
# What every process writes by design: its part of orbax checkpoints and exports, and its
# grain iterator's position (under ckpt/).
SHARED_WRITES = {"ckpt", "variables"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_two_processes(workdir, data_dir, attempt: int) -> list[subprocess.Popen]:
    """Both processes of one run in the background (output to workdir.<attempt>.p<i>.log)."""
    address = f"127.0.0.1:{free_port()}"
    procs = []
    for index in (0, 1):
        args, env = main_command(workdir, data_dir, *OVERRIDES, devices=4)
        env.update(JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(index))
        if index:
            args = ["sh", "-c", 'umask 077 && exec "$@"', "sh", *args]
        log = open(f"{workdir}.{attempt}.p{index}.log", "w")
        procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
    return procs


def finish(procs, workdir, attempt: int) -> list[str]:
    """Waits for both processes to exit 0; their outputs."""
    codes = [p.wait(timeout=600) for p in procs]
    logs = [open(f"{workdir}.{attempt}.p{i}.log").read() for i in (0, 1)]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    return logs


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, data_dir, eight_device_run) -> dict:
    workdir = tmp_path_factory.mktemp("multiprocess") / "two"
    procs = start_two_processes(workdir, data_dir, attempt=1)
    wait_for_step(workdir / "distill" / "cmc" / "metrics.jsonl", 3, procs[0])
    procs[1].send_signal(signal.SIGTERM)
    stopped = finish(procs, workdir, attempt=1)
    step = int(stopped[0].split("stopped by SIGTERM after step ")[1].split(";")[0])
    saved = {p.name for p in (workdir / "distill" / "cmc" / "ckpt").iterdir()}
    finished = finish(start_two_processes(workdir, data_dir, attempt=2), workdir, attempt=2)
    return dict(one=eight_device_run, two=workdir, stopped=stopped, step=step, saved=saved,
                finished=finished)


def methods(workdir) -> dict:
    return json.loads((workdir / "results.json").read_text())["methods"]


def losses(workdir, stage) -> list[float]:
    return [json.loads(line)["loss"]
            for line in (workdir / stage / "metrics.jsonl").read_text().splitlines()]


def test_sigterm_to_one_process_stops_both_at_the_same_step(scenario):
    step = scenario["step"]
    assert 3 <= step < 16 and str(step) in scenario["saved"]
    assert f"[distill/cmc] resuming from step {step}" in scenario["finished"][0]


def test_two_processes_stopped_and_resumed_train_as_one_process_with_8_devices(scenario):
    """The same batches and steps: equal losses up to the stop and just after the resume,
    then within 1% (the collectives sum in another order, which AdamW steps amplify), and
    the same results within 8 of the 160 test records (tiny encoders, near-tied probes)."""
    for stage in STAGES:
        one, two = losses(scenario["one"], stage), losses(scenario["two"], stage)
        assert len(one) == len(two)
        exact = scenario["step"] + 2 if stage == "distill/cmc" else 5
        assert two[:exact] == pytest.approx(one[:exact], rel=1e-4), stage
        assert two == pytest.approx(one, rel=1e-2), stage
    one, two = methods(scenario["one"])["cmc"], methods(scenario["two"])["cmc"]
    for key in ("probe_top1", "seg_miou"):
        assert two[key] == pytest.approx(one[key], abs=0.05)


def test_only_process_zero_prints_and_writes_results_figures_and_logs(scenario):
    workdir = scenario["two"]
    for log0, log1 in (scenario["stopped"], scenario["finished"]):
        assert "[distill/cmc] step" in log0
        assert "cmcd_jax" not in log1 and "[distill/cmc]" not in log1
    assert "probe_top1" in scenario["finished"][0]
    by_process_one = [p.relative_to(workdir).as_posix() for p in workdir.rglob("*")
                      if p.is_file() and not stat.S_IMODE(p.stat().st_mode) & 0o044
                      and not SHARED_WRITES & set(p.relative_to(workdir).parts)]
    assert by_process_one == []
    assert {"results.json", "results.md", "figures", "config.json"} <= {
        p.name for p in workdir.iterdir()}
