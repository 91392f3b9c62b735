"""Why some demo frames end worse than their pose estimates: the default demo with one thing changed
per row (RESULTS.md, "Demo: why frames 2, 3 and the last end worse than their estimates").

    python experiments/demo_frame_errors.py                 # every row (slow on CPU: ~1 h)
    python experiments/demo_frame_errors.py default exact   # some rows

Rows: default, true-camera (the tracked camera replaced by the ground truth), no-colour (colour
net not fine-tuned), exact (noise-free pose estimates), paper-hsi (300 HSI iterations per frame,
30 root-only), carry (hsi.adam_state 'carry'), camera-pivot (camera.pivot 'camera').
"""

from __future__ import annotations

import dataclasses
import sys
import time

import jax.numpy as jnp
import numpy as np

import zerohsi_jax.reconstruct.pipeline as pipeline
from zerohsi_jax.metrics.ground_truth import ground_truth_errors, per_frame_joint_errors_mm
from zerohsi_jax.reconstruct import Observations, quick_schedule, reconstruct
from zerohsi_jax.synthetic.instances import build_demo_scene, noisy_estimates

ROWS = ("default", "true-camera", "no-colour", "exact", "paper-hsi", "carry", "camera-pivot")


def _with(cfg, stage, **changes):
    return dataclasses.replace(cfg, **{stage: dataclasses.replace(getattr(cfg, stage), **changes)})


def _true_camera_program(demo, tracked_program):
    """The camera program with its result replaced by the ground truth of the frame it was given."""
    def program(shared, batch, settings):
        frame = np.asarray(batch.frame[0])
        t = int(np.argmin([np.abs(frame - f).sum() for f in demo.frames]))
        tracked = tracked_program(shared, batch, settings)
        return tracked._replace(viewmat=jnp.asarray(demo.truth.viewmats[t])[None])

    return program


def main(rows) -> None:
    demo = build_demo_scene(12, 128)
    tracked_program = pipeline.camera_program
    for row in rows:
        cfg, noise = quick_schedule(), 0.05
        pipeline.camera_program = tracked_program
        if row == "true-camera":
            pipeline.camera_program = _true_camera_program(demo, tracked_program)
        elif row == "no-colour":
            cfg = _with(cfg, "hsi", color_every=0)
        elif row == "exact":
            noise = 0.0
        elif row == "paper-hsi":
            cfg = _with(cfg, "hsi", iterations=300, root_only_iterations=30)
        elif row == "carry":
            cfg = _with(cfg, "hsi", adam_state="carry")
        elif row == "camera-pivot":
            cfg = _with(cfg, "camera", pivot="camera")
        elif row != "default":
            raise SystemExit(f"unknown row {row!r}; rows: {', '.join(ROWS)}")
        est = noisy_estimates(np.asarray(demo.truth.human.body_pose), noise, 100)[None]
        obs = Observations(jnp.asarray(demo.frames[None]), jnp.asarray(demo.human_masks[None]),
                           jnp.asarray(demo.object_masks[None]), jnp.asarray(est))
        began = time.perf_counter()
        result = reconstruct(demo.inputs, obs, demo.initial, demo.vposer, cfg, raster=demo.raster, progress=False)
        errors = ground_truth_errors(demo.inputs.body, result, demo.truth, estimates=est)
        per_frame = per_frame_joint_errors_mm(demo.inputs.body, result.human_stage2, demo.truth, result.betas)[0]
        print(f"| {row} | {errors['mpjpe_stage2_mm']:.1f} | {per_frame[2]:.1f} / {per_frame[3]:.1f} / "
              f"{per_frame[-1]:.1f} | {errors['camera_translation_mm']:.1f} | "
              f"{time.perf_counter() - began:.0f} s |", flush=True)
    pipeline.camera_program = tracked_program


if __name__ == "__main__":
    main(sys.argv[1:] or ROWS)
