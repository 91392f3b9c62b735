"""The commands that run the pipeline from a run config: init-frame, segment, reconstruct, continue.

Each writes into the config's output folder: the resolved config, a log, results and pictures.
Before any work a command checks the config (keys, ranges, the files it needs) and the output
folder (not a file, writable), and holds the folder's lock while it runs (one command per folder
at a time). A command that fails leaves no folder it created behind, unless it holds finished
frames to resume. `config.yaml` beside a run folder is the config that run was made with: a
command that would leave it naming other inputs than the run's does not write it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import yaml
from jaxtyping import Float, UInt8

from .avatar import builtin_avatar, load_avatar
from .body import SMPLX, VPoser
from .errors import InputError, MissingFileError
from .files import atomic_write, save_json, save_npz, save_text
from .geometry import axis_angle_to_matrix, matrix_to_axis_angle
from .io import load_video_for_camera, write_image
from .reconstruct import HumanPose, InitialState, ObjectPose, Observations, reconstruct
from .reconstruct.pipeline import measure_raster_config
from .reconstruct.report import write_run_pictures
from .reconstruct.run_files import DamagedRunFileError, RunFolder, command_output, folder_lock
from .reconstruct.state import SceneInputs, compose_gaussians
from .run_config import RunConfig, load_checked_config, load_run_config, run_config_to_dict, with_absolute_paths
from .segment import segment_reference_video
from .splat import Camera, RasterConfig, fit_capacity, load_ply, render
from .synthetic import synthetic_smplx_path
from .synthetic.motion import standing_pose
from .synthetic.pose_prior import synthetic_pose_prior

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
        raise MissingFileError(f"{what} {path} does not exist; {fix}")
    return path


def load_assets(cfg: RunConfig, *, render_size=None) -> Assets:
    """Body, avatar, pose prior, Gaussians, camera and initial state named by the config. The
    user's small files are read first, so that a mistake in one shows before the body, avatar and
    pose prior are built."""
    camera = Camera.load_json(_require(cfg.path(cfg.camera), "camera file", "set camera in the config"))
    size = render_size or cfg.render_size
    if size is not None:
        camera = camera.resized(int(size[0]), int(size[1]))
    scene = load_ply(_require(cfg.path(cfg.scene.ply), "scene file", "set scene.ply in the config"))
    obj = None
    object_pose = None
    if cfg.object.ply is not None:
        obj = load_ply(_require(cfg.path(cfg.object.ply), "object file", "set object.ply or null"))
        # The object's frame is centred on its Gaussians: rotations are about its own centre.
        obj = obj.transform(jnp.eye(3), -jnp.mean(obj.means, axis=0))
        object_pose = ObjectPose(axis_angle_to_matrix(jnp.asarray(cfg.object.rotation, jnp.float32)),
                                 jnp.asarray(cfg.object.translation, jnp.float32))
    if cfg.human.body_pose is None:
        body_pose = standing_pose()
    else:
        path = _require(cfg.path(cfg.human.body_pose), "body pose file", "give a .npy of 63 values")
        body_pose = _read_npy(path, "63 axis-angle values (human.body_pose)")
        if body_pose.size != 63:
            raise InputError(f"{path}: a body pose has 63 axis-angle values, got {body_pose.size} (human.body_pose)")
    human = HumanPose(jnp.asarray(cfg.human.transl, jnp.float32), jnp.asarray(cfg.human.global_orient, jnp.float32),
                      jnp.asarray(np.reshape(body_pose, 63), jnp.float32))

    synthetic = cfg.human.smplx_model == "synthetic"
    if cfg.human.vposer == "synthetic" and not synthetic:
        raise InputError("human.vposer: 'synthetic' is trained on the synthetic body only; give the converted "
                         "VPoser V02_05 file (python -m converters.vposer_to_eqx V02_05/ vposer.eqx)")
    model_path = synthetic_smplx_path() if synthetic else _require(
        cfg.path(cfg.human.smplx_model), "SMPL-X model", "download SMPL-X from https://smpl-x.is.tue.mpg.de "
        "(convert .pkl files with python -m converters.smplx_pkl_to_npz)")
    body = SMPLX.load(model_path, num_betas=10, use_pca=False, flat_hand_mean=True)
    if cfg.human.avatar == "builtin":
        avatar = builtin_avatar(0, model_path, size=cfg.human.avatar_size, num_gaussians=cfg.human.avatar_gaussians)
    else:
        avatar = load_avatar(cfg.path(cfg.human.avatar))
    if cfg.human.vposer == "synthetic":
        vposer = synthetic_pose_prior(body)
    else:
        vposer = VPoser.load(cfg.path(cfg.human.vposer))
    return Assets(body, avatar, vposer, scene, obj, camera, InitialState(human, object_pose))


def render_initial_state(assets: Assets, camera, background):
    """R(G_H^0, G_O^0, G_S; T_0) with group masks (eq. 9 at frame 0), over `background` (the run's
    `reconstruct.background`: the fit must see the background the video generator saw)."""
    pose = assets.initial.object_pose_or_identity()
    g = compose_gaussians(assets.avatar, assets.initial.human, assets.object, pose, assets.scene, camera.position)
    raster = fit_capacity(g, camera)
    return render(g, camera, jnp.asarray(background, jnp.float32), num_groups=3, config=raster)


def _write_config(out: Path, cfg: RunConfig, *, run: bool = False) -> None:
    """The resolved config beside the run folder. Only a run writes it over a run folder's config
    (`run`: called once the run folder is known to hold this config's problem): another command
    would leave the run's results beside a config that did not make them."""
    if not run and (out / "run" / RunFolder.MANIFEST).exists():
        return
    resolved = run_config_to_dict(with_absolute_paths(cfg))
    save_text(out / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))


def _log(out: Path, message: str) -> None:
    from .devices import processes

    here = processes()
    if here.count > 1:  # the processes of a multi-process run share the log
        message = f"[process {here.index}] {message}"
    print(message, flush=True)
    with open(out / "log.txt", "a") as f:
        f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + message + "\n")


def init_frame_command(config_path) -> Path:
    """Render the initial state at the video generator's resolution: the image that, with the
    prompt, goes to an image-to-video model (the paper uses KLING v1.0)."""
    cfg = load_checked_config(config_path, "init-frame")
    with command_output(cfg.path(cfg.output), f"init-frame {config_path}") as out:
        assets = load_assets(cfg)
        camera = assets.camera.resized(cfg.init_frame.width, cfg.init_frame.height)
        aspect_cam = assets.camera.width / assets.camera.height
        if abs(aspect_cam - camera.width / camera.height) > 0.01 * aspect_cam:
            raise InputError(f"{config_path}: init_frame is {camera.width}x{camera.height} but the camera is "
                             f"{assets.camera.width}x{assets.camera.height}: the aspect ratios differ; make them "
                             "match")
        result = render_initial_state(assets, camera, cfg.reconstruct.background)
        _write_config(out, cfg)
        path = write_image(out / "init_frame.png", np.asarray(result.rgb))
        _log(out, f"init-frame: wrote {path} ({camera.width}x{camera.height}); prompt: {cfg.prompt!r}")
    return path


class VideoMasks(NamedTuple):
    """A reference video's kept frames and their masks."""

    frames: UInt8[np.ndarray, "T H W 3"]
    human_masks: Float[np.ndarray, "T H W"]
    object_masks: Float[np.ndarray, "T H W"]
    camera: Camera
    """The camera at the render size."""
    fps: float
    """Frame rate of the kept frames."""


def _video_masks(cfg: RunConfig, assets: Assets, index: int, out: Path, frames_camera) -> VideoMasks:
    """The frames and masks of video `index` (the config's mask file, else segmented)."""
    video = cfg.path(cfg.video.paths[index])
    if cfg.video.masks is not None:
        frames, fps, camera = load_video_for_camera(video, frames_camera, stride=cfg.video.stride,
                                                    max_frames=cfg.video.max_frames)
        mask_file = _require(cfg.path(cfg.video.masks[index]), "mask file", "give a .npz with 'human' and 'object'")
        human, objmask = _read_arrays(mask_file, ("human", "object"), "(each (T, H, W), one per kept frame)")
        expected = frames.shape[:3]
        for name, arr in (("human", human), ("object", objmask)):
            if arr.shape != expected:
                raise InputError(f"{mask_file}: '{name}' has shape {arr.shape}, expected {expected} (kept frames "
                                 "at the render size)")
        return VideoMasks(frames, human.astype(np.float32), objmask.astype(np.float32), camera, fps)

    rendered = render_initial_state(assets, frames_camera, cfg.reconstruct.background)
    groups = {"human": HUMAN} if assets.object is None else {"human": HUMAN, "object": OBJECT}
    seg = segment_reference_video(
        video, frames_camera, np.asarray(rendered.group_masks), groups, checkpoint=cfg.path(cfg.segment.checkpoint),
        model_config=cfg.segment.model_config, device=cfg.segment.device, stride=cfg.video.stride,
        max_frames=cfg.video.max_frames, num_points=cfg.segment.num_points, num_negative=cfg.segment.num_negative,
        pictures_dir=out / f"segment_{index}",
    )
    objmask = seg.masks.get("object", np.zeros_like(seg.masks["human"]))
    return VideoMasks(seg.frames, seg.masks["human"].astype(np.float32), objmask.astype(np.float32), seg.camera,
                      seg.fps)


def _read_arrays(path: Path, keys, shapes: str) -> list[np.ndarray]:
    """The arrays `keys` of an .npz file the user gave; an error naming the file when it cannot be
    read or lacks one."""
    try:
        with np.load(path) as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise InputError(f"{path}: missing arrays {missing} {shapes}")
            return [f[k] for k in keys]
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 (a damaged file raises whatever the reader meets)
        raise InputError(f"{path}: not a readable .npz file ({type(err).__name__}: {err}); write it again") from err


def _read_npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path)
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{path}: not a readable .npy file of {what} ({type(err).__name__}: {err})") from err


def segment_command(config_path) -> list[Path]:
    cfg = load_checked_config(config_path, "segment")
    with command_output(cfg.path(cfg.output), f"segment {config_path}") as out:
        assets = load_assets(cfg)
        _write_config(out, cfg)
        written = []
        for i, video in enumerate(cfg.video.paths):
            video_masks = _video_masks(cfg, assets, i, out, assets.camera)
            path = save_npz(out / f"masks_{i}.npz", human=video_masks.human_masks > 0.5,
                            object=video_masks.object_masks > 0.5)
            written.append(path)
            _log(out, f"segment: {video}: {len(video_masks.frames)} frames, masks in {path}")
    return written


def reconstruct_command(config_path, *, seeds: int | None = None, resume: bool = True, redo_from: int | None = None,
                        devices: int | None = None, capacities: RasterConfig | None = None):
    """Run the three stages on the config's videos (the first `seeds` of them, batched, split over
    `devices` of this process: default all). The run folder is `<output>/run`; its pictures are
    written before it is marked complete (by process 0 in a multi-process run). `capacities`: the
    rasterizer capacities to keep where they suffice (`measure_raster_config(at_least=...)`)."""
    cfg = load_checked_config(config_path, "reconstruct")
    count = len(cfg.video.paths) if seeds is None else seeds
    if not 1 <= count <= len(cfg.video.paths):
        raise InputError(f"--seeds {seeds}: the config lists {len(cfg.video.paths)} video(s)")
    with command_output(cfg.path(cfg.output), f"reconstruct {config_path}") as out:
        return _reconstruct_into(out, cfg, count, resume, redo_from, devices, capacities)


def _reconstruct_into(out: Path, cfg: RunConfig, count: int, resume: bool, redo_from: int | None,
                      devices: int | None = None, capacities: RasterConfig | None = None):
    assets = load_assets(cfg)
    per_video = [_video_masks(cfg, assets, i, out, assets.camera) for i in range(count)]
    lengths = [len(v.frames) for v in per_video]
    if len(set(lengths)) > 1:
        raise InputError(f"the videos keep different numbers of frames {lengths}; set video.max_frames to "
                         f"{min(lengths)} so that they can be fitted together")
    camera = per_video[0].camera
    estimates = None
    if cfg.video.pose_estimates is not None:
        estimates = []
        for i in range(count):
            path = _require(cfg.path(cfg.video.pose_estimates[i]), "pose estimate file", "give a (T, 63) .npy")
            est = _read_npy(path, "body pose estimates")
            if est.shape != (lengths[0], 63):
                raise InputError(f"{path}: shape {est.shape}, expected ({lengths[0]}, 63): one body pose per kept "
                                 "frame (video.pose_estimates)")
            estimates.append(est)
        estimates = jnp.asarray(np.stack(estimates), jnp.float32)
    obs = Observations(
        frames=jnp.asarray(np.stack([v.frames for v in per_video]), jnp.float32) / 255.0,
        human_masks=jnp.asarray(np.stack([v.human_masks for v in per_video])),
        object_masks=jnp.asarray(np.stack([v.object_masks for v in per_video])),
        pose_estimates=estimates,
    )
    inputs = SceneInputs(assets.scene, assets.object, assets.avatar, assets.body, camera)
    raster = measure_raster_config(inputs, assets.initial, cfg.reconstruct, at_least=capacities)

    def on_start():
        # The run folder holds this config's problem (or was cleared for it): the config may go beside it.
        _write_config(out, cfg, run=True)
        _log(out, f"reconstruct: {count} video(s) x {lengths[0]} frames at {camera.width}x{camera.height}, "
                  f"tile capacity {raster.tile_capacity}")

    def pictures(result):
        for s in range(count):
            write_run_pictures(out / "run" / f"seed_{s}", inputs, result, np.asarray(obs.frames[s]),
                               fps=per_video[0].fps, seed=s, background=cfg.reconstruct.background)

    began = time.perf_counter()
    result = reconstruct(inputs, obs, assets.initial, assets.vposer, cfg.reconstruct, run_dir=out / "run",
                         resume=resume, redo_from=redo_from, raster=raster, frame_rate=per_video[0].fps,
                         on_start=on_start, before_complete=pictures, log=lambda m: _log(out, m), devices=devices)
    _log(out, f"reconstruct: done in {time.perf_counter() - began:.1f} s on {_devices_text(result.devices)}; "
              f"timings {json.dumps(result.timings)}")
    _log(out, f"reconstruct: results and pictures in {out / 'run'}")
    return result


def _devices_text(record: dict) -> str:
    text = f"{record.get('count')} {'/'.join(record.get('kinds', []))} device(s)"
    return text + (f" in {record['processes']} processes" if record.get("processes", 1) > 1 else "")


def _read_result(path: Path, load):
    """A result file of a finished run; an error naming it, and how to write it again, when it is damaged."""
    try:
        return load(path)
    except Exception as err:  # noqa: BLE001 (a truncated file raises whatever the reader meets)
        raise DamagedRunFileError(
            f"{path}: damaged, cannot be read back ({type(err).__name__}: {err}); rerun `zerohsi-jax reconstruct "
            "CONFIG` with the run's config: it resumes the finished run and writes its results again") from err


def continue_command(run_dir, *, video: str | None = None, masks: str | None = None,
                     pose_estimates: str | None = None, out: str | None = None, seed: int = 0, resume: bool = True,
                     devices: int | None = None):
    """Long-term sequences (paper appendix C.5): the last reconstructed frame of seed `seed` of
    RUN_DIR becomes the initial state of the next clip. Writes the next clip's config and renders
    its initial frame (`init_frame.png`, the picture `init-frame` makes, from the chained state),
    from which the next video is generated. With `video` (that generated clip), reconstructs it
    too and chains the clips' motions into one file (resuming the next clip's run when `resume`)."""
    run_dir = Path(run_dir)
    if video is None and (masks is not None or pose_estimates is not None):
        raise InputError("--masks and --pose-estimates belong to the next clip: give its --video too")
    for flag, path in (("--video", video), ("--masks", masks), ("--pose-estimates", pose_estimates)):
        if path is not None and not Path(path).exists():
            raise MissingFileError(f"{flag} {path} does not exist")
    cfg = load_run_config(_require(run_dir / "config.yaml", "resolved config", "run reconstruct first"))
    nxt = Path(out) if out is not None else run_dir / "next"
    # The finished run is read under its lock (a rerun into it cannot change it half-way); the next
    # clip's folder is this command's output.
    with folder_lock(run_dir, f"continue {run_dir} (reading)"):
        completion = RunFolder(run_dir / "run").completion()
        if not 0 <= seed < int(completion["seeds"]):
            raise InputError(f"--seed {seed}: {run_dir / 'run'} holds seeds 0..{int(completion['seeds']) - 1}")
        results = run_dir / "run" / f"seed_{seed}"
        params = _read_result(_require(results / "smplx_params.npz", "results", "the run has not finished"),
                              lambda p: dict(np.load(p)))
        objects = _read_result(results / "object_poses.npy", np.load)
        viewmats = _read_result(results / "camera_viewmats.npy", np.load)
    with command_output(nxt, f"continue {run_dir}"):
        return _continue_into(run_dir, nxt, cfg, params, objects, viewmats, video, masks, pose_estimates, seed,
                              resume, devices, completion.get("raster"))


def _continue_into(run_dir, nxt, cfg, params, objects, viewmats, video, masks, pose_estimates, seed, resume,
                   devices=None, capacities: dict | None = None):
    atomic_write(nxt / "initial_body_pose.npy", lambda tmp: np.save(tmp, params["body_pose"][-1]))
    cam = json.loads(cfg.path(cfg.camera).read_text())
    cam.update({"viewmat": viewmats[-1].tolist()})
    for key in ("eye", "target", "up", "camtoworld"):
        cam.pop(key, None)
    save_json(nxt / "camera.json", cam)

    rotation = np.asarray(matrix_to_axis_angle(jnp.asarray(objects[-1, :3, :3])))
    absolute = lambda p: str(Path(p).resolve())  # noqa: E731
    data = run_config_to_dict(cfg)  # its paths are absolute already (written by _out_dir)
    data["human"].update(transl=params["transl"][-1].tolist(), global_orient=params["global_orient"][-1].tolist(),
                         body_pose=str((nxt / "initial_body_pose.npy").resolve()))
    if cfg.object.ply is not None:
        data["object"].update(translation=objects[-1, :3, 3].tolist(), rotation=rotation.tolist())
    data["camera"] = str((nxt / "camera.json").resolve())
    if video is not None:
        data["video"].update(paths=[absolute(video)], masks=[absolute(masks)] if masks else None,
                             pose_estimates=[absolute(pose_estimates)] if pose_estimates else None)
    else:
        # The next clip does not exist yet: its video is generated from the frame rendered below.
        data["video"].update(paths=[str((nxt / "next_clip.mp4").resolve())], masks=None, pose_estimates=None)
    data["output"] = str(nxt.resolve())
    # Beside a run of an earlier next clip, config.yaml stays that run's until `reconstruct` below
    # finds its folder suits this config (then it writes config.yaml) or refuses.
    config_path = nxt / ("continue.yaml" if (nxt / "run" / RunFolder.MANIFEST).exists() else "config.yaml")
    save_text(config_path, yaml.safe_dump(data, sort_keys=False))
    init_frame = init_frame_command(config_path)
    if video is None:
        print(f"continue: generate the next clip from {init_frame} and the prompt, then run\n"
              f"  zerohsi-jax continue {run_dir} --video NEXT_CLIP.mp4")
        return None
    # The previous clip's capacities where they suffice: its compiled programs then serve this clip.
    previous = RasterConfig().with_capacity(**capacities) if capacities else None
    reconstruct_command(config_path, seeds=1, resume=resume, devices=devices, capacities=previous)
    chained = _chain(run_dir, nxt, seed)
    print(f"continue: chained motion of {len(chained['transl'])} frames in {nxt / 'chained_smplx_params.npz'}")
    return chained


def _chain(previous: Path, nxt: Path, seed: int = 0) -> dict:
    """Concatenate the clips (the next clip's frame 0 is the previous clip's last frame: dropped)."""
    before = previous / "chained_smplx_params.npz"
    if not before.exists():
        before = previous / "run" / f"seed_{seed}" / "smplx_params.npz"
    a = _read_result(before, lambda p: dict(np.load(p)))
    b = _read_result(nxt / "run" / "seed_0" / "smplx_params.npz", lambda p: dict(np.load(p)))
    chained = {k: np.concatenate([a[k], b[k][1:]]) for k in a}
    save_npz(nxt / "chained_smplx_params.npz", **chained)
    return chained
