"""The commands that run the pipeline from a run config: init-frame, segment, reconstruct, continue.

Each writes into the config's run folder: the resolved config, a log, results and pictures.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import yaml

from .run_config import RunConfig, load_run_config, run_config_to_dict, with_absolute_paths

HUMAN, OBJECT, SCENE = 0, 1, 2  # group ids in renders (the reconstruction's convention)


@dataclasses.dataclass
class Assets:
    body: object
    avatar: object
    vposer: object
    scene: object
    object: object | None
    camera: object
    initial: object  # InitialState


def _require(path: Path | None, what: str, fix: str) -> Path:
    if path is None or not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist; {fix}")
    return path


def load_assets(cfg: RunConfig, *, render_size=None) -> Assets:
    """Body, avatar, pose prior, Gaussians, camera and initial state named by the config."""
    import jax.numpy as jnp

    from .body import SMPLX, VPoser, axis_angle_to_matrix, synthetic_smplx_path
    from .reconstruct import HumanPose, InitialState, ObjectPose
    from .splat import Camera, load_ply

    synthetic = cfg.human.smplx_model == "synthetic"
    model_path = synthetic_smplx_path() if synthetic else _require(
        cfg.path(cfg.human.smplx_model), "SMPL-X model", "download SMPL-X from https://smpl-x.is.tue.mpg.de "
        "(convert .pkl files with python -m converters.smplx_pkl_to_npz)")
    body = SMPLX.load(model_path, num_betas=10, use_pca=False, flat_hand_mean=True)
    if cfg.human.avatar == "builtin":
        from .avatar import builtin_avatar

        avatar = builtin_avatar(0, model_path, size=cfg.human.avatar_size, num_gaussians=cfg.human.avatar_gaussians)
    else:
        from .avatar import load_avatar

        avatar = load_avatar(cfg.path(cfg.human.avatar))
    if cfg.human.vposer == "synthetic":
        if not synthetic:
            raise ValueError("human.vposer: 'synthetic' is trained on the synthetic body only; give the converted "
                             "VPoser V02_05 file (python -m converters.vposer_to_eqx V02_05/ vposer.eqx)")
        from .synthetic.pose_prior import synthetic_pose_prior

        vposer = synthetic_pose_prior(body)
    else:
        vposer = VPoser.load(cfg.path(cfg.human.vposer))
    scene = load_ply(_require(cfg.path(cfg.scene.ply), "scene file", "set scene.ply in the config"))
    obj = None
    object_pose = None
    if cfg.object.ply is not None:
        obj = load_ply(_require(cfg.path(cfg.object.ply), "object file", "set object.ply or null"))
        # The object's frame is centred on its Gaussians: rotations are about its own centre.
        obj = obj.transform(jnp.eye(3), -jnp.mean(obj.means, axis=0))
        object_pose = ObjectPose(axis_angle_to_matrix(jnp.asarray(cfg.object.rotation, jnp.float32)),
                                 jnp.asarray(cfg.object.translation, jnp.float32))
    camera = Camera.load_json(_require(cfg.path(cfg.camera), "camera file", "set camera in the config"))
    size = render_size or cfg.render_size
    if size is not None:
        camera = camera.resized(int(size[0]), int(size[1]))
    if cfg.human.body_pose is None:
        from .synthetic.motion import standing_pose

        body_pose = standing_pose()
    else:
        body_pose = np.load(_require(cfg.path(cfg.human.body_pose), "body pose file", "give a .npy of 63 values"))
        if body_pose.size != 63:
            raise ValueError(f"{cfg.human.body_pose}: a body pose has 63 axis-angle values, got {body_pose.size}")
    human = HumanPose(jnp.asarray(cfg.human.transl, jnp.float32), jnp.asarray(cfg.human.global_orient, jnp.float32),
                      jnp.asarray(np.reshape(body_pose, 63), jnp.float32))
    return Assets(body, avatar, vposer, scene, obj, camera, InitialState(human, object_pose))


def render_initial_state(assets: Assets, camera, background=(1.0, 1.0, 1.0)):
    """R(G_H^0, G_O^0, G_S; T_0) with group masks (eq. 9 at frame 0)."""
    import jax.numpy as jnp

    from .reconstruct import ObjectPose
    from .reconstruct.state import compose_gaussians
    from .splat import fit_capacity, render

    pose = assets.initial.object_pose or ObjectPose(jnp.eye(3), jnp.zeros(3))
    g = compose_gaussians(assets.avatar, assets.initial.human, assets.object, pose, assets.scene, camera.position)
    raster = fit_capacity(g, camera)
    return render(g, camera, jnp.asarray(background, jnp.float32), num_groups=3, config=raster)


def _out_dir(cfg: RunConfig) -> Path:
    out = cfg.path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    resolved = run_config_to_dict(with_absolute_paths(cfg))
    (out / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    return out


def _log(out: Path, message: str) -> None:
    print(message, flush=True)
    with open(out / "log.txt", "a") as f:
        f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + message + "\n")


def init_frame_command(config_path) -> Path:
    """Render the initial state at the video generator's resolution: the image that, with the
    prompt, goes to an image-to-video model (the paper uses KLING v1.0)."""
    from .io import write_image

    cfg = load_run_config(config_path)
    out = _out_dir(cfg)
    assets = load_assets(cfg)
    camera = assets.camera.resized(cfg.init_frame.width, cfg.init_frame.height)
    aspect_cam = assets.camera.width / assets.camera.height
    if abs(aspect_cam - camera.width / camera.height) > 0.01 * aspect_cam:
        raise ValueError(f"init_frame is {camera.width}x{camera.height} but the camera is "
                         f"{assets.camera.width}x{assets.camera.height}: the aspect ratios differ; make them match")
    result = render_initial_state(assets, camera)
    path = write_image(out / "init_frame.png", np.asarray(result.rgb))
    _log(out, f"init-frame: wrote {path} ({camera.width}x{camera.height}); prompt: {cfg.prompt!r}")
    return path


def _video_masks(cfg: RunConfig, assets: Assets, index: int, out: Path, frames_camera):
    """(frames uint8 (T, H, W, 3), human masks, object masks, camera at render size) of video `index`."""
    from .io import load_video_for_camera

    video = cfg.path(cfg.video.paths[index])
    if cfg.video.masks is not None:
        frames, _, camera = load_video_for_camera(video, frames_camera, stride=cfg.video.stride,
                                                  max_frames=cfg.video.max_frames)
        mask_file = _require(cfg.path(cfg.video.masks[index]), "mask file", "give a .npz with 'human' and 'object'")
        with np.load(mask_file) as m:
            missing = [k for k in ("human", "object") if k not in m.files]
            if missing:
                raise ValueError(f"{mask_file}: missing arrays {missing} (each (T, H, W), one per kept frame)")
            human, objmask = m["human"], m["object"]
        expected = frames.shape[:3]
        for name, arr in (("human", human), ("object", objmask)):
            if arr.shape != expected:
                raise ValueError(f"{mask_file}: '{name}' has shape {arr.shape}, expected {expected} (kept frames "
                                 "at the render size)")
        return frames, human.astype(np.float32), objmask.astype(np.float32), camera
    from .segment import segment_reference_video

    rendered = render_initial_state(assets, frames_camera)
    groups = {"human": HUMAN} if assets.object is None else {"human": HUMAN, "object": OBJECT}
    seg = segment_reference_video(
        video, frames_camera, np.asarray(rendered.group_masks), groups, checkpoint=cfg.path(cfg.segment.checkpoint),
        model_config=cfg.segment.model_config, device=cfg.segment.device, stride=cfg.video.stride,
        max_frames=cfg.video.max_frames, num_points=cfg.segment.num_points, num_negative=cfg.segment.num_negative,
        pictures_dir=out / f"segment_{index}",
    )
    objmask = seg.masks.get("object", np.zeros_like(seg.masks["human"]))
    return seg.frames, seg.masks["human"].astype(np.float32), objmask.astype(np.float32), seg.camera


def segment_command(config_path) -> list[Path]:
    cfg = load_run_config(config_path)
    out = _out_dir(cfg)
    assets = load_assets(cfg)
    written = []
    for i, video in enumerate(cfg.video.paths):
        frames, human, objmask, _ = _video_masks(cfg, assets, i, out, assets.camera)
        path = out / f"masks_{i}.npz"
        np.savez_compressed(path, human=human > 0.5, object=objmask > 0.5)
        written.append(path)
        _log(out, f"segment: {video}: {len(frames)} frames, masks in {path}")
    return written


def reconstruct_command(config_path, *, seeds: int | None = None, resume: bool = True):
    """Run the three stages on the config's videos (the first `seeds` of them, batched)."""
    import jax.numpy as jnp

    from .reconstruct import Observations, reconstruct
    from .reconstruct.pipeline import measure_raster_config
    from .reconstruct.report import write_run_pictures
    from .reconstruct.state import SceneInputs

    cfg = load_run_config(config_path)
    out = _out_dir(cfg)
    assets = load_assets(cfg)
    count = len(cfg.video.paths) if seeds is None else seeds
    if not 1 <= count <= len(cfg.video.paths):
        raise ValueError(f"--seeds {seeds}: the config lists {len(cfg.video.paths)} video(s)")
    per_video = [_video_masks(cfg, assets, i, out, assets.camera) for i in range(count)]
    lengths = [len(v[0]) for v in per_video]
    if len(set(lengths)) > 1:
        raise ValueError(f"the videos keep different numbers of frames {lengths}; set video.max_frames to "
                         f"{min(lengths)} so that they can be fitted together")
    camera = per_video[0][3]
    estimates = None
    if cfg.video.pose_estimates is not None:
        estimates = []
        for i in range(count):
            est = np.load(_require(cfg.path(cfg.video.pose_estimates[i]), "pose estimate file", "give a (T, 63) .npy"))
            if est.shape != (lengths[0], 63):
                raise ValueError(f"{cfg.video.pose_estimates[i]}: shape {est.shape}, expected ({lengths[0]}, 63): "
                                 "one body pose per kept frame")
            estimates.append(est)
        estimates = jnp.asarray(np.stack(estimates), jnp.float32)
    obs = Observations(
        frames=jnp.asarray(np.stack([v[0] for v in per_video]), jnp.float32) / 255.0,
        human_masks=jnp.asarray(np.stack([v[1] for v in per_video])),
        object_masks=jnp.asarray(np.stack([v[2] for v in per_video])),
        pose_estimates=estimates,
    )
    inputs = SceneInputs(assets.scene, assets.object, assets.avatar, assets.body, camera)
    raster = measure_raster_config(inputs, assets.initial, cfg.reconstruct)
    _log(out, f"reconstruct: {count} video(s) x {lengths[0]} frames at {camera.width}x{camera.height}, "
              f"tile capacity {raster.tile_capacity}")
    began = time.perf_counter()
    result = reconstruct(inputs, obs, assets.initial, assets.vposer, cfg.reconstruct, run_dir=out / "run",
                         resume=resume, raster=raster)
    _log(out, f"reconstruct: done in {time.perf_counter() - began:.1f} s; timings {json.dumps(result.timings)}")
    for s in range(count):
        write_run_pictures(out / "run" / f"seed_{s}", inputs, result, np.asarray(obs.frames[s]), seed=s)
    _log(out, f"reconstruct: results and pictures in {out / 'run'}")
    return result


def continue_command(run_dir, *, video: str, masks: str | None = None, pose_estimates: str | None = None,
                     out: str | None = None):
    """Long-term sequences (paper appendix C.5): the last reconstructed frame of RUN_DIR becomes
    the initial state of the next clip; the clips' motions are chained into one file."""
    from .body import matrix_to_axis_angle

    run_dir = Path(run_dir)
    cfg = load_run_config(_require(run_dir / "config.yaml", "resolved config", "run reconstruct first"))
    results = run_dir / "run" / "seed_0"
    params = dict(np.load(_require(results / "smplx_params.npz", "results", "the run has not finished")))
    objects = np.load(results / "object_poses.npy")
    viewmats = np.load(results / "camera_viewmats.npy")
    nxt = Path(out) if out is not None else run_dir / "next"
    nxt.mkdir(parents=True, exist_ok=True)
    np.save(nxt / "initial_body_pose.npy", params["body_pose"][-1])
    cam = json.loads(cfg.path(cfg.camera).read_text())
    cam.update({"viewmat": viewmats[-1].tolist()})
    for key in ("eye", "target", "up", "camtoworld"):
        cam.pop(key, None)
    (nxt / "camera.json").write_text(json.dumps(cam, indent=2))
    import jax.numpy as jnp

    rotation = np.asarray(matrix_to_axis_angle(jnp.asarray(objects[-1, :3, :3])))
    absolute = lambda p: str(Path(p).resolve())  # noqa: E731
    data = run_config_to_dict(cfg)  # its paths are absolute already (written by _out_dir)
    data["human"].update(transl=params["transl"][-1].tolist(), global_orient=params["global_orient"][-1].tolist(),
                         body_pose=str((nxt / "initial_body_pose.npy").resolve()))
    if cfg.object.ply is not None:
        data["object"].update(translation=objects[-1, :3, 3].tolist(), rotation=rotation.tolist())
    data["camera"] = str((nxt / "camera.json").resolve())
    data["video"].update(paths=[absolute(video)], masks=[absolute(masks)] if masks else None,
                         pose_estimates=[absolute(pose_estimates)] if pose_estimates else None)
    data["output"] = str(nxt.resolve())
    config_path = nxt / "config.yaml"
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    reconstruct_command(config_path, seeds=1)
    chained = _chain(run_dir, nxt)
    print(f"continue: chained motion of {len(chained['transl'])} frames in {nxt / 'chained_smplx_params.npz'}")
    return chained


def _chain(previous: Path, nxt: Path) -> dict:
    """Concatenate the clips (the next clip's frame 0 is the previous clip's last frame: dropped)."""
    before = previous / "chained_smplx_params.npz"
    if not before.exists():
        before = previous / "run" / "seed_0" / "smplx_params.npz"
    a = dict(np.load(before))
    b = dict(np.load(nxt / "run" / "seed_0" / "smplx_params.npz"))
    chained = {k: np.concatenate([a[k], b[k][1:]]) for k in a}
    np.savez(nxt / "chained_smplx_params.npz", **chained)
    return chained
