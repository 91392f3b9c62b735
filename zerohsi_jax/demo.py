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


@dataclasses.dataclass(frozen=True)
class DemoScene:
    inputs: object  # SceneInputs
    truth: object  # GroundTruth
    initial: object  # InitialState
    frames: np.ndarray  # (T, H, W, 3) float32
    human_masks: np.ndarray
    object_masks: np.ndarray
    vposer: object
    raster: object
    room: object = None  # SceneAssets: the solids behind the scene's Gaussians (penetration metrics)


def render_reference(inputs, truth, raster, background=(0.0, 0.0, 0.0)):
    """The reference video of a ground truth, and the masks a segmenter would give: the visible
    pixels of human and object (the render knows whose each pixel is). Float (T, H, W, 3), (T, H, W).
    `background`: the run's background colour (`ReconstructConfig.background`)."""
    import jax
    import jax.numpy as jnp

    from .reconstruct.hsi_fit import render_frame
    from .reconstruct.state import HUMAN_GROUP, OBJECT_GROUP, tree_index

    @jax.jit
    def draw(human, object_pose, viewmat):
        out = render_frame(inputs.avatar, human, inputs.object, object_pose, inputs.scene,
                           inputs.camera.with_viewmat(viewmat), raster, jnp.asarray(background, jnp.float32))
        return out.rgb, out.group_masks

    frames, human_masks, object_masks = [], [], []
    for t in range(truth.viewmats.shape[0]):
        rgb, masks = draw(tree_index(truth.human, t), tree_index(truth.object_poses, t), jnp.asarray(truth.viewmats[t]))
        frames.append(np.asarray(rgb))
        human_masks.append(np.asarray(masks[..., HUMAN_GROUP] > 0.5, np.float32))
        object_masks.append(np.asarray(masks[..., OBJECT_GROUP] > 0.5, np.float32))
    return np.stack(frames), np.stack(human_masks), np.stack(object_masks)


def build_instance(num_frames: int, size: int, *, seed: int = 0, variations=(None,), dynamic: bool = True,
                   fov_y_deg: float = 55.0, avatar_gaussians: int = 4000, avatar_size: str = "small",
                   room_spacing: float = 0.12, object_spacing: float = 0.035, betas=None):
    """A generated instance: the scene, body, avatar and pose prior, and one ground truth per
    entry of `variations` (videos of the same initial state). Without `dynamic`, the box is part
    of the static scene. `betas`: the subject's shape (the avatar's and the truth's; None: zeros).
    Returns (inputs, initial state, truths, raster, pose prior, room)."""
    from .avatar import builtin_avatar
    from .body import SMPLX, synthetic_smplx_path
    from .reconstruct import InitialState, ReconstructConfig, SceneInputs
    from .reconstruct.pipeline import measure_raster_config
    from .reconstruct.state import SCENE_GROUP, tree_index
    from .splat import Camera, Gaussians
    from .synthetic import make_object, make_room
    from .synthetic.motion import interaction_motion
    from .synthetic.pose_prior import synthetic_pose_prior

    body = SMPLX.load(synthetic_smplx_path(), num_betas=10, use_pca=False, flat_hand_mean=True)
    avatar = builtin_avatar(seed, size=avatar_size, num_gaussians=avatar_gaussians, betas=betas)
    room = make_room(seed=seed, spacing=room_spacing)
    half = 0.1
    obj = make_object(seed=seed + 1, size=(0.28, 2 * half, 0.2), spacing=object_spacing)
    truths = [interaction_motion(body, num_frames, table_center=room.table_center, table_top=room.table_top_height,
                                 object_half_height=half, camera_size=size, fov_y_deg=fov_y_deg, variation=v,
                                 dynamic=dynamic, betas=betas) for v in variations]
    truth = truths[0]
    focal = 0.5 * size / np.tan(np.deg2rad(fov_y_deg) / 2)
    camera0 = Camera(truth.viewmats[0], focal, focal, size / 2, size / 2, size, size, near=0.05, far=100.0)
    object_pose0 = tree_index(truth.object_poses, 0)
    scene = room.scene
    if not dynamic:
        placed = obj.transform(object_pose0.rotation, object_pose0.translation).with_group(SCENE_GROUP)
        scene, obj = Gaussians.concatenate([scene, placed]), None
    inputs = SceneInputs(scene=scene, object=obj, avatar=avatar, body=body, camera=camera0)
    initial = InitialState(human=tree_index(truth.human, 0), object_pose=object_pose0 if dynamic else None)
    raster = measure_raster_config(inputs, initial, ReconstructConfig(), headroom=2.0)
    return inputs, initial, truths, raster, synthetic_pose_prior(body, seed=seed), room


def build_demo_scene(num_frames: int, size: int, *, seed: int = 0, background=(0.0, 0.0, 0.0),
                     **assets) -> DemoScene:
    """Assets, ground truth and the reference video of the demo rendered over `background`
    (smaller assets through the keywords of `build_instance`, for tests)."""
    inputs, initial, (truth,), raster, prior, room = build_instance(num_frames, size, seed=seed, **assets)
    frames, human_masks, object_masks = render_reference(inputs, truth, raster, background)
    return DemoScene(inputs, truth, initial, frames, human_masks, object_masks, prior, raster, room)


def noisy_estimates(truth_body_pose: np.ndarray, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (truth_body_pose + rng.normal(scale=noise, size=truth_body_pose.shape)).astype(np.float32)


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
    import jax
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
                       device=str(jax.devices()[0]))
        save_json(out_dir / "metrics.json", metrics)
        write_report(out_dir, demo, result, estimates, cfg.background)

    began = time.perf_counter()
    reconstruct(demo.inputs, obs, demo.initial, demo.vposer, cfg, run_dir=out_dir / "run",
                resume=not args.no_resume, redo_from=getattr(args, "redo_from", None), raster=demo.raster,
                on_start=on_start, before_complete=report)
    keys = ("mpjpe_mm", "mpjpe_stage2_mm", "mpjpe_estimate_mm", "root_translation_mm", "root_orientation_deg",
            "camera_rotation_deg", "camera_translation_mm", "object_translation_mm", "object_rotation_deg", "seconds")
    print("\nground-truth errors (frames 1..T-1, mean over seeds):")
    for k in keys:
        print(f"  {k:24s} {metrics[k]:10.2f}")
    print(f"\nwrote {out_dir}/metrics.json, {out_dir}/video.mp4, {out_dir}/errors.png, {out_dir}/run/")
    return 0
