"""Seeds per second on one device and on every device of this machine (`reconstruct(devices=...)`).

Each setting is run twice on the same problem (generated seeds: one video each); the second run is
timed, so compilation is left out (it is reported apart). On a machine of several accelerators
this measures how the seeds scale over them. On CPU the devices are one host split by XLA
(--xla_force_host_platform_device_count, set here when not given): they share the same cores, so
the run is a correctness check (both settings must give the same results) and NOT a speed
measurement; the output says so.

    python experiments/bench/bench_devices.py --seeds 8 --frames 4 --out results_devices.json
"""

from __future__ import annotations

import argparse
import os
import sys

CPU_DEVICES = 4
"""Host devices XLA splits the CPU into when the caller did not choose (a correctness check only)."""

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    # Set before JAX starts: it splits only the CPU platform and changes nothing on a GPU.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={CPU_DEVICES}").strip()

import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine_info import machine  # noqa: E402

from zerohsi_jax.reconstruct import Observations, paper_schedule, quick_schedule, reconstruct  # noqa: E402
from zerohsi_jax.synthetic.instances import build_instance, noisy_estimates, render_reference  # noqa: E402


def problem(seeds: int, frames: int, size: int, background):
    """A generated instance with one video per seed (another motion each) and its estimates."""
    built = build_instance(frames, size, variations=list(range(seeds)))
    videos = [render_reference(built.inputs, t, built.raster, background) for t in built.truths]
    estimates = np.stack([noisy_estimates(np.asarray(t.human.body_pose), 0.05, 100 + i)
                          for i, t in enumerate(built.truths)])
    obs = Observations(*(jnp.asarray(np.stack([v[k] for v in videos])) for k in range(3)),
                       pose_estimates=jnp.asarray(estimates))
    return built, obs


def timed(built, obs, cfg, devices: int) -> dict:
    """Compile-and-run seconds of the first run, seconds of the second, and its results."""
    def run():
        began = time.perf_counter()
        result = reconstruct(built.inputs, obs, built.initial, built.vposer, cfg, raster=built.raster,
                             progress=False, devices=devices)
        return result, time.perf_counter() - began

    _, first_s = run()
    result, seconds = run()
    seeds = int(obs.frames.shape[0])
    return {"devices": devices, "first_run_s": round(first_s, 3), "seconds": round(seconds, 3),
            "seeds_per_second": round(seeds / seconds, 4), "record": result.devices, "result": result}


def largest_difference(a, b) -> float:
    pairs = [(a.viewmats, b.viewmats), (a.object_poses, b.object_poses)]
    pairs += [(getattr(a.human, k), getattr(b.human, k)) for k in ("transl", "global_orient", "body_pose")]
    pairs += [(getattr(a.human_stage2, k), getattr(b.human_stage2, k)) for k in ("transl", "global_orient",
                                                                                 "body_pose")]
    return float(max(np.abs(np.asarray(x) - np.asarray(y)).max() for x, y in pairs))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8, help="seeds (videos) fitted together")
    parser.add_argument("--frames", type=int, default=4, help="video frames")
    parser.add_argument("--size", type=int, default=64, help="image width and height")
    parser.add_argument("--schedule", choices=["quick", "paper"], default="quick")
    parser.add_argument("--devices", type=int, default=None, help="the 'all devices' setting (default: all)")
    parser.add_argument("--out", help="JSON file for the numbers")
    args = parser.parse_args(argv)

    available = jax.local_devices()
    count = args.devices or len(available)
    platform = available[0].platform
    speed = platform != "cpu"
    if not speed:
        print(f"CPU: {count} devices split from one host share its cores; this run checks that the seeds give the "
              "same results on 1 and on all devices. It is NOT a speed measurement.", flush=True)
    cfg = paper_schedule() if args.schedule == "paper" else quick_schedule()
    built, obs = problem(args.seeds, args.frames, args.size, cfg.background)
    one = timed(built, obs, cfg, 1)
    every = timed(built, obs, cfg, count)
    difference = largest_difference(one.pop("result"), every.pop("result"))
    report = {
        "machine": machine(),
        "platform": platform,
        "speed_measurement": speed,
        "seeds": args.seeds, "frames": args.frames, "size": args.size, "schedule": args.schedule,
        "one_device": one,
        "all_devices": every,
        "speedup": round(one["seconds"] / every["seconds"], 3),
        "largest_result_difference": difference,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    label = "seeds/s" if speed else "seeds/s (not a speed measurement: CPU)"
    print(f"1 device: {one['seeds_per_second']} {label}; {count} devices: {every['seeds_per_second']} {label}; "
          f"results differ by at most {difference:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
