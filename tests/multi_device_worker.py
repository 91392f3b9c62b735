"""The child processes of tests/test_multi_device.py (a process sees its device count from the
XLA_FLAGS it starts with, and `jax.distributed` joins whole processes, so these runs cannot share
the test session's process).

    python tests/multi_device_worker.py devices PROBLEM OUT_DIR
        the seeds on 1 and on 4 devices, and a run started on 1 device resumed on 4
    python tests/multi_device_worker.py process PROBLEM RUN_DIR OUT_DIR COORDINATOR PROCESS_ID [DIE_AFTER_FRAME]
        one of two processes of a multi-process run (process 1 kills itself once it finished frame
        DIE_AFTER_FRAME, when given)
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import signal
import sys
from pathlib import Path

# The run configs, small: a few iterations of every stage; the multi-process runs skip camera
# tracking and the refinement (what they test is the split of the seeds, and each program they
# leave out is a compilation less).
CFG_ARGS = {"camera": {"iterations": 3}, "hsi": {"iterations": 4, "root_only_iterations": 1},
            "refine": {"iterations": 5}}


def configs():
    from zerohsi_jax.reconstruct import CameraTrackingConfig, HSIFitConfig, ReconstructConfig, RefineConfig

    full = ReconstructConfig(camera=CameraTrackingConfig(**CFG_ARGS["camera"]), hsi=HSIFitConfig(**CFG_ARGS["hsi"]),
                             refine=RefineConfig(**CFG_ARGS["refine"]))
    small = dataclasses.replace(full, camera=dataclasses.replace(full.camera, enabled=False),
                                refine=dataclasses.replace(full.refine, enabled=False))
    return full, small


def load_problem(path):
    import jax.numpy as jnp

    from zerohsi_jax.reconstruct import Observations

    with open(path, "rb") as f:
        p = pickle.load(f)
    p["obs"] = Observations(*(jnp.asarray(a) for a in p["obs"][:3]), pose_estimates=jnp.asarray(p["obs"][3]))
    return p


def run(p, cfg, **kw):
    from zerohsi_jax.reconstruct import reconstruct

    return reconstruct(p["inputs"], p["obs"], p["initial"], p["vposer"], cfg, raster=p["raster"], progress=False,
                       **kw)


def arrays(result) -> dict:
    import numpy as np

    out = {"viewmats": result.viewmats, "object_poses": result.object_poses}
    for stage, human in (("stage2", result.human_stage2), ("refined", result.human)):
        for k in ("transl", "global_orient", "body_pose"):
            out[f"{stage}_{k}"] = np.asarray(getattr(human, k))
    return out


def save(path: Path, result) -> None:
    import numpy as np

    np.savez(path, **arrays(result))


def frame_times(folder: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in sorted((folder / "frames").glob("frame_*.npz"))}


def devices_mode(problem, out: Path) -> None:
    from zerohsi_jax.reconstruct.run_files import RunFolder

    p = load_problem(problem)
    full, small = configs()
    save(out / "one_device.npz", run(p, full, devices=1))
    save(out / "one_device_small.npz", run(p, small, devices=1))  # the multi-process test's reference
    four = run(p, full, devices=4, run_dir=out / "four")
    save(out / "four_devices.npz", four)

    # A run on one device, killed once frame 1 is on disk, resumed on four.
    original = RunFolder.write_color_state

    def write_then_stop(self, t, color):
        original(self, t, color)
        if t == 1:
            raise KeyboardInterrupt

    RunFolder.write_color_state = write_then_stop
    try:
        run(p, full, devices=1, run_dir=out / "resumed")
    except KeyboardInterrupt:
        pass
    RunFolder.write_color_state = original
    interrupted = {"frames": frame_times(out / "resumed"),
                   "manifest": json.loads((out / "resumed" / "run.json").read_text())}
    resumed = run(p, full, devices=4, run_dir=out / "resumed")
    save(out / "resumed.npz", resumed)
    (out / "record.json").write_text(json.dumps({
        "interrupted": interrupted, "resumed_frames": frame_times(out / "resumed"), "result_devices": four.devices,
    }))


def cache_writes_in_every_process() -> None:
    """Let this process write its compiled programs to the persistent cache whatever its process
    id. JAX writes from process 0 only (`jax._src.compiler._cache_write`, against write contention
    on shared file systems); process 1's programs run on its own device (id 2048 on the CPU), so
    their cache keys are its own and no other process writes them. Without this, the relaunched
    process 1 compiles its programs again (a minute or more on 2 cores) while process 0, which
    loads its own from the cache, waits for it. A test-speed measure only: what runs is the same."""
    from jax._src import compiler, distributed

    original = getattr(compiler, "_cache_write", None)
    if original is None or not hasattr(distributed.global_state, "process_id"):
        return  # another JAX: process 1 compiles again, the test only takes longer

    def write(*args, **kwargs):
        process_id = distributed.global_state.process_id
        distributed.global_state.process_id = 0
        try:
            return original(*args, **kwargs)
        finally:
            distributed.global_state.process_id = process_id

    compiler._cache_write = write


def process_mode(problem, run_dir: Path, out: Path, coordinator: str, process_id: int, die_after: int | None) -> None:
    from zerohsi_jax.devices import initialize_distributed

    here = initialize_distributed(coordinator, 2, process_id)
    cache_writes_in_every_process()
    assert here.index == process_id and here.count == 2, here
    from zerohsi_jax.reconstruct.run_files import RunFolder

    if die_after is not None and process_id == 1:
        # Killed once frame `die_after` can be resumed from: its frame file and the colour-net
        # checkpoint after it are on disk.
        original = RunFolder.write_color_state

        def write_then_die(self, t, color):
            original(self, t, color)
            if t == die_after:
                os.kill(os.getpid(), signal.SIGKILL)  # as a crash or a preempted machine: no clean-up

        RunFolder.write_color_state = write_then_die
    p = load_problem(problem)
    _, small = configs()
    result = run(p, small, devices=1, run_dir=run_dir)
    save(out / f"process_{process_id}.npz", result)


def main(argv):
    from zerohsi_jax.cache import enable_compilation_cache

    # The test session's folder of compiled programs: a program compiled by one child loads in the next.
    enable_compilation_cache(os.environ["ZEROHSI_TEST_XLA_CACHE"], min_compile_seconds=0.5)
    mode = argv[0]
    if mode == "devices":
        devices_mode(argv[1], Path(argv[2]))
    elif mode == "process":
        die = int(argv[6]) if len(argv) > 6 else None
        process_mode(argv[1], Path(argv[2]), Path(argv[3]), argv[4], int(argv[5]), die)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
