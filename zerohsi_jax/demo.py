"""`zerohsi-jax demo`: the whole pipeline on generated assets with a known ground truth.

A Gaussian room with a table, a box on it, the synthetic SMPL-X body wearing the built-in avatar,
and a ground-truth motion (reach, grasp, lift) filmed by a slowly moving camera. The reference
video is rendered from the ground truth; the masks that SAM2 would give come from the render's
group coverage; the per-frame pose estimates that a pose estimator would give are the
ground-truth body poses plus noise (`--estimate-noise`, radians). Then the three stages run and
the result is scored against the ground truth. The refinement's pose prior is a VPoser trained
on other generated motions (`zerohsi_jax.synthetic.pose_prior`): official weights cannot be
downloaded here; a real run points the config at V02_05.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from .synthetic.instances import DemoScene, build_demo_scene, noisy_estimates

REPORT_FILES = ("metrics.json", "video.mp4", "errors.png", "losses.png")
"""The demo's pictures and scores beside its run folder, written before the run is marked complete."""


def write_report(out_dir: Path, demo: DemoScene, result, estimates, background=(0.0, 0.0, 0.0)) -> None:
    """video.mp4, losses.png, and errors.png (per-frame MPJPE of the estimates, stage 2 and the
    refinement against the ground truth)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .metrics.ground_truth import per_frame_joint_errors_mm, with_body_poses
    from .reconstruct.report import write_run_pictures
    from .reconstruct.run_files import save_figure

    write_run_pictures(out_dir, demo.inputs, result, demo.frames, background=background)
    body, truth = demo.inputs.body, demo.truth
    est = with_body_poses(truth.human, estimates, estimates.shape[0])
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for name, human in (("pose estimates (input)", est), ("stage 2: HSI fit", result.human_stage2),
                        ("stage 3: refined", result.human)):
        ax.plot(per_frame_joint_errors_mm(body, human, truth, result.betas).mean(0), label=name, marker="o", ms=3)
    ax.axvline(truth.grasp_frame, color="grey", ls=":", lw=1)
    ax.set_xlabel("frame")
    ax.set_ylabel("MPJPE (mm)")
    ax.legend()
    fig.tight_layout()
    save_figure(out_dir / "errors.png", fig, dpi=110)
    plt.close(fig)


def run_demo(args) -> int:
    """The demo into `args.out`: checked and locked for the run (one demo per folder at a time);
    a demo that fails before finishing a frame leaves no folder it created behind."""
    from .reconstruct.run_files import command_output

    with command_output(Path(args.out), f"demo --out {args.out}") as out_dir:
        return _run_demo(args, out_dir)


def _run_demo(args, out_dir: Path) -> int:
    import jax.numpy as jnp

    from .demo_config import centred_object_frame, config_ready_demo
    from .metrics.ground_truth import ground_truth_errors
    from .reconstruct import Observations, paper_schedule, quick_schedule, reconstruct
    from .reconstruct.run_files import save_json

    started = time.perf_counter()
    cfg = paper_schedule() if args.paper_schedule else quick_schedule()
    if args.frame_parallel:
        cfg = dataclasses.replace(cfg, mode="frame_parallel")
    print(f"building the demo scene ({args.frames} frames at {args.size}x{args.size}) ...", flush=True)
    built = build_demo_scene(args.frames, args.size, seed=args.seed, background=cfg.background)
    seeds = args.seeds
    body_pose = np.asarray(built.truth.human.body_pose)
    estimates = np.stack([noisy_estimates(body_pose, args.estimate_noise, args.seed + 100 + s) for s in range(seeds)])
    # The demo in the object frame of the files `config_ready_demo` writes (`view`, `export` read them like
    # any run's config); they are written only once the run folder is known to suit this demo (`on_start`).
    demo = centred_object_frame(built)
    obs = Observations(
        frames=jnp.asarray(np.broadcast_to(demo.frames, (seeds,) + demo.frames.shape)),
        human_masks=jnp.asarray(np.broadcast_to(demo.human_masks, (seeds,) + demo.human_masks.shape)),
        object_masks=jnp.asarray(np.broadcast_to(demo.object_masks, (seeds,) + demo.object_masks.shape)),
        pose_estimates=jnp.asarray(estimates),
    )
    setup_s = time.perf_counter() - started
    print(f"scene ready in {setup_s:.1f} s: {demo.inputs.scene.num} scene, {demo.inputs.object.num} object, "
          f"{demo.inputs.avatar.num_gaussians} avatar Gaussians; tile capacity {demo.raster.tile_capacity}", flush=True)

    def on_start():
        # The scores and pictures of an earlier demo here go first: the new ones come before complete.json.
        for name in REPORT_FILES:
            (out_dir / name).unlink(missing_ok=True)
        config_ready_demo(out_dir, built, seed=args.seed, schedule=cfg, estimates=estimates)

    metrics = {}

    def report(result):
        metrics.update(ground_truth_errors(demo.inputs.body, result, demo.truth, estimates=estimates))
        metrics.update(seconds=round(time.perf_counter() - began, 2), setup_seconds=round(setup_s, 2),
                       frames=args.frames, size=args.size, seeds=seeds,
                       schedule="paper" if args.paper_schedule else "quick", mode=cfg.mode, timings=result.timings,
                       device=str(result.devices.get("kinds")), devices=result.devices)
        save_json(out_dir / "metrics.json", metrics)
        write_report(out_dir, demo, result, estimates, cfg.background)

    began = time.perf_counter()
    reconstruct(demo.inputs, obs, demo.initial, demo.vposer, cfg, run_dir=out_dir / "run",
                resume=not args.no_resume, redo_from=getattr(args, "redo_from", None), raster=demo.raster,
                on_start=on_start, before_complete=report, devices=getattr(args, "devices", None))
    if not metrics:  # another process than 0 of a multi-process demo: process 0 scored and wrote the run
        return 0
    keys = ("mpjpe_mm", "mpjpe_stage2_mm", "mpjpe_estimate_mm", "root_translation_mm", "root_orientation_deg",
            "camera_rotation_deg", "camera_translation_mm", "object_translation_mm", "object_rotation_deg", "seconds")
    print("\nground-truth errors (frames 1..T-1, mean over seeds):")
    for k in keys:
        print(f"  {k:24s} {metrics[k]:10.2f}")
    print(f"\nwrote {out_dir}/metrics.json, {out_dir}/video.mp4, {out_dir}/errors.png, {out_dir}/run/")
    return 0
