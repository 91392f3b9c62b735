"""Seeds over several devices and several processes (zerohsi_jax.devices, reconstruct/shares.py).

Each run is a child process (tests/multi_device_worker.py): the CPU is split into 4 devices with
XLA_FLAGS=--xla_force_host_platform_device_count=4, and two processes join with
`jax.distributed.initialize` on a local port (CPU collectives: gloo, JAX's default). The problem
is the tiny demo's (3 frames at 40x40) with six videos of other motions, one per seed.

Tolerance: the same seed fitted in another batch size (6 on one device, 2 per device on four, 3 per
process) runs other XLA fusions, so the results agree to float round-off, not bit for bit: the
largest difference measured here was 9e-7 (body pose, radians) and 4e-9 (camera matrices). The
tests allow 2e-5, far below what any mixing of seeds would give (the seeds' poses differ by more
than 1e-3).
"""

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

WORKER = Path(__file__).with_name("multi_device_worker.py")
SEEDS = 6
ATOL = 2e-5
TIMEOUT_S = 1200


def _env() -> dict:
    root = str(Path(__file__).resolve().parents[1])
    flags = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()  # conftest's kept
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags,
                ZEROHSI_TEST_XLA_CACHE=jax.config.jax_compilation_cache_dir,
                PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))


def _worker(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, what: str) -> str:
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"{what} failed (exit {proc.returncode}):\n{out[-4000:]}"
    return out


@pytest.fixture(scope="module")
def problem_file(tmp_path_factory, tiny_demo):
    """Six videos of the tiny demo's initial state (another motion each) with their masks and
    estimates, pickled for the child processes."""
    from zerohsi_jax.synthetic.instances import noisy_estimates, render_reference
    from zerohsi_jax.synthetic.motion import interaction_motion

    d = tiny_demo
    videos = []
    for s in range(SEEDS):
        truth = d.truth if s == 0 else interaction_motion(
            d.inputs.body, d.frames.shape[0], table_center=d.room.table_center, table_top=d.room.table_top_height,
            object_half_height=0.1, camera_size=d.frames.shape[1], variation=s)
        frames, human, obj = (d.frames, d.human_masks, d.object_masks) if s == 0 else render_reference(
            d.inputs, truth, d.raster)
        videos.append((frames, human, obj, noisy_estimates(np.asarray(truth.human.body_pose), 0.05, 10 + s)))
    obs = [np.stack([v[k] for v in videos]) for k in range(4)]
    # Other videos: the seeds are different problems.
    assert min(np.abs(obs[0][a, -1] - obs[0][b, -1]).max() for a in range(SEEDS) for b in range(a)) > 0.05
    path = tmp_path_factory.mktemp("multi_device") / "problem.pkl"
    with open(path, "wb") as f:
        pickle.dump({"inputs": d.inputs, "initial": d.initial, "vposer": d.vposer, "raster": d.raster, "obs": obs}, f)
    return path


@pytest.fixture(scope="module")
def device_runs(problem_file):
    """The worker's `devices` runs: its output folder."""
    out = problem_file.parent / "devices"
    out.mkdir()
    _finish(_worker("devices", problem_file, out), "the 4-device runs")
    return out


def _assert_same(a: dict, b: dict, what: str):
    for key in a.files:
        np.testing.assert_allclose(a[key], b[key], atol=ATOL, rtol=0, err_msg=f"{what}: {key}")


@pytest.mark.slow(seconds=380)
def test_six_seeds_on_four_devices_equal_one_device(device_runs):
    one = np.load(device_runs / "one_device.npz")
    four = np.load(device_runs / "four_devices.npz")
    assert one["viewmats"].shape[0] == SEEDS and four["viewmats"].shape[0] == SEEDS  # padding (to 8) cut off
    _assert_same(one, four, "6 seeds on 4 devices vs 1 device")
    # The seeds are different problems, so an equality cannot come from seeds mixed up.
    assert np.abs(one["stage2_body_pose"][0] - one["stage2_body_pose"][1]).max() > 1e-3

    run = device_runs / "four"
    with np.load(run / "frames" / "frame_0002.npz") as frame:
        assert frame["body_pose"].shape == (SEEDS, 63)  # the files hold the real seeds only
    np.testing.assert_allclose(np.load(run / "seed_5" / "smplx_params.npz")["body_pose"], four["refined_body_pose"][5],
                               atol=1e-6)
    assert not (run / "seed_6").exists()
    manifest = json.loads((run / "run.json").read_text())
    complete = json.loads((run / "complete.json").read_text())
    for record in (manifest["devices"], complete["devices"]):
        assert record["count"] == 4 and record["platform"] == "cpu" and record["processes"] == 1
    assert manifest["seeds"] == SEEDS and complete["seeds"] == SEEDS

    from zerohsi_jax.run_results import load_run

    loaded = load_run(run)
    assert len(loaded.seeds) == SEEDS and loaded.losses["hsi"].shape[:2] == (SEEDS, 2)


def test_a_run_started_on_one_device_resumes_on_four(device_runs):
    record = json.loads((device_runs / "record.json").read_text())
    interrupted = record["interrupted"]
    assert interrupted["manifest"]["devices"]["count"] == 1
    assert sorted(interrupted["frames"]) == ["frame_0000.npz", "frame_0001.npz"]
    # The finished frames were kept (not fitted again), the rest fitted on four devices.
    for name, mtime in interrupted["frames"].items():
        assert record["resumed_frames"][name] == mtime, name
    assert "frame_0002.npz" in record["resumed_frames"]
    manifest = json.loads((device_runs / "resumed" / "run.json").read_text())
    assert manifest["devices"]["count"] == 4  # recorded, and not part of the run's identity
    _assert_same(np.load(device_runs / "one_device.npz"), np.load(device_runs / "resumed.npz"),
                 "started on 1 device, resumed on 4")


def test_shares_padding_and_device_errors():
    """The pure parts: each process's block of seeds, the padding and its cut, and the errors that
    name the fix."""
    from zerohsi_jax.devices import DeviceError, choose_devices, cut_leading, pad_leading, process_share

    shares = [process_share(7, p, 3) for p in range(3)]
    assert shares == [range(0, 3), range(3, 5), range(5, 7)]  # contiguous, every seed once, sizes differ by <= 1
    with pytest.raises(DeviceError, match="start 2 process"):
        process_share(2, 0, 3)
    tree = {"a": np.arange(6).reshape(3, 2), "none": None}
    padded = pad_leading(tree, 4)
    np.testing.assert_array_equal(padded["a"][3], tree["a"][2])  # the last seed repeated: a real problem
    np.testing.assert_array_equal(cut_leading(padded, 3)["a"], tree["a"])
    with pytest.raises(DeviceError, match=r"--devices 99: this process sees \d+ cpu device\(s\).*give --devices"):
        choose_devices(99)


def test_the_device_count_is_recorded_but_not_compared():
    from zerohsi_jax.reconstruct.run_files import manifest_changes

    one = {"seeds": 6, "inputs": {"frames": "a"}, "devices": {"count": 1}}
    four = {**one, "devices": {"count": 4}}
    assert manifest_changes(one, four) == []
    assert manifest_changes(one, {**four, "seeds": 5}) == ["seeds"]


def test_partial_multi_process_flags_are_an_error(capsys):
    from zerohsi_jax.cli import main

    assert main(["demo", "--num-processes", "2", "--process-id", "0"]) == 2
    assert "missing ['--coordinator']" in capsys.readouterr().err
    assert main(["demo", "--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"]) == 2
    assert "the process ids are 0..1" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(problem_file, run_dir, out, die_after=None) -> list[subprocess.Popen]:
    coordinator = f"127.0.0.1:{_free_port()}"
    extra = [] if die_after is None else [die_after]
    return [_worker("process", problem_file, run_dir, out, coordinator, i, *extra) for i in (0, 1)]


@pytest.mark.slow(seconds=160)
def test_two_processes_equal_one_and_resume_after_one_is_killed(problem_file, device_runs, tmp_path):
    run_dir = tmp_path / "run"
    part1 = run_dir / "part-3-5"
    # Process 1 dies (SIGKILL, as a crash) once its frame 1 is on disk; process 0 is then stopped too.
    procs = _launch(problem_file, run_dir, tmp_path, die_after=1)
    procs[1].communicate(timeout=TIMEOUT_S)
    assert procs[1].returncode == -signal.SIGKILL
    procs[0].kill()
    procs[0].communicate(timeout=60)
    kept = {p.name: p.stat().st_mtime_ns for p in (part1 / "frames").glob("frame_*.npz")}
    assert sorted(kept) == ["frame_0000.npz", "frame_0001.npz"]
    assert not (run_dir / "complete.json").exists()

    time.sleep(0.01)  # so that a rewritten file would get another mtime
    procs = _launch(problem_file, run_dir, tmp_path)
    for i, proc in enumerate(procs):
        _finish(proc, f"process {i}")
    for name, mtime in kept.items():
        assert (part1 / "frames" / name).stat().st_mtime_ns == mtime, f"{name} was fitted again"

    reference = np.load(device_runs / "one_device_small.npz")
    for i in (0, 1):  # every process returns every seed's results
        _assert_same(reference, np.load(tmp_path / f"process_{i}.npz"), f"2 processes (process {i}) vs 1")

    # The run folder reads as a one-process run's: every seed under its own index, written once.
    from zerohsi_jax.run_results import load_run

    loaded = load_run(run_dir)
    assert len(loaded.seeds) == SEEDS
    for s in range(SEEDS):
        np.testing.assert_allclose(loaded.seeds[s].poses["stage2"]["body_pose"], reference["stage2_body_pose"][s],
                                   atol=ATOL)
    assert sorted(p.name for p in run_dir.glob("part-*")) == ["part-0-2", "part-3-5"]
    with np.load(part1 / "frames" / "frame_0002.npz") as frame:
        assert frame["body_pose"].shape == (3, 63)  # a part holds its own share of the seeds
    complete = json.loads((run_dir / "complete.json").read_text())
    assert complete["seeds"] == SEEDS and complete["devices"]["processes"] == 2 and complete["devices"]["count"] == 2
