"""`zerohsi-jax export`: a finished run in the files other tools read.

- `amass`: the AMASS SMPL-X motion layout (one `.npz` per seed) that AMASS's loaders, motion
  datasets' pipelines and the SMPL-X Blender add-on read: `poses` (T, 165) in SMPL-X's full-pose
  order, `trans`, its named slices, `betas`, `gender`, `mocap_frame_rate`, `surface_model_type`.
- `smplx`: per seed the arrays under `smplx.SMPLX`'s keyword names (`model(**arrays)` poses
  them) and a JSON of how to load the model (gender, betas, full hands, frame rate).
- `cameras`: per seed a JSON of every frame's world-to-camera matrix, the intrinsics and size.
- `objects`: per seed a JSON of the object's pose per frame beside the path of its PLY.

Coordinates are the run's world (metres; the synthetic scenes are y-up) and are written as they
are: no axis change is applied, so every export of one run agrees with the others.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from jaxtyping import Float

from .files import save_json, save_npz
from .run_results import RunResults, load_config_of, load_run, render_camera, resolve_frame_rate
from .splat import Camera, load_ply

FORMATS = ("amass", "smplx", "cameras", "objects")

FULL_POSE_ORDER = (("global_orient", 3), ("body_pose", 63), ("jaw_pose", 3), ("leye_pose", 3), ("reye_pose", 3),
                   ("left_hand_pose", 45), ("right_hand_pose", 45))
"""SMPL-X's 55 joints in the order its full pose concatenates them (165 axis-angle values)."""

OPENCV_AXES = ("OpenCV camera axes: x right, y down, z forward (the camera looks along +z). world_to_camera maps "
               "world points (metres) to camera coordinates; a point p projects to pixel K @ (p / p_z).")


# ------------------------------------------------------------------------------ AMASS


def subject_betas(params: dict[str, np.ndarray], source: str = "parameters") -> Float[np.ndarray, " B"]:
    """The one shape of a sequence: the run repeats the subject's betas on every frame."""
    betas = np.asarray(params["betas"], np.float32)
    if betas.ndim == 1:
        return betas
    if not np.allclose(betas, betas[:1], atol=1e-6):
        raise ValueError(f"{source}: betas change over the frames; an AMASS sequence has one shape")
    return betas[0]


def amass_arrays(params: dict[str, np.ndarray], *, gender: str, frame_rate: float,
                 source: str = "parameters") -> dict[str, np.ndarray]:
    """The AMASS SMPL-X arrays of one sequence from per-frame `smplx.SMPLX` keyword arrays (T, n)
    with full (not PCA) hand poses."""
    t = np.asarray(params["transl"]).shape[0]
    parts = []
    for key, width in FULL_POSE_ORDER:
        value = np.asarray(params.get(key, np.zeros((t, width))), np.float32).reshape(t, -1)
        if value.shape[1] != width:
            raise ValueError(f"{source}: '{key}' has {value.shape[1]} values per frame, expected {width} "
                             "(hands as full axis-angle, not PCA coefficients)")
        parts.append(value)
    poses = np.concatenate(parts, axis=1)
    betas = subject_betas(params, source)
    return {
        "poses": poses,
        "trans": np.asarray(params["transl"], np.float32),
        "root_orient": poses[:, 0:3],
        "pose_body": poses[:, 3:66],
        "pose_jaw": poses[:, 66:69],
        "pose_eye": poses[:, 69:75],
        "pose_hand": poses[:, 75:165],
        "betas": betas,
        "num_betas": np.asarray(betas.size, np.int64),
        "gender": np.asarray(gender),
        "mocap_frame_rate": np.asarray(float(frame_rate), np.float64),
        "mocap_time_length": np.asarray(t / float(frame_rate), np.float64),
        "surface_model_type": np.asarray("smplx"),
    }


def smplx_keywords_from_amass(amass: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse: `smplx.SMPLX` keyword arrays (T, n) from an AMASS SMPL-X file's arrays."""
    poses = np.asarray(amass["poses"], np.float32)
    t = poses.shape[0]
    out, start = {}, 0
    for key, width in FULL_POSE_ORDER:
        out[key] = poses[:, start:start + width]
        start += width
    out["transl"] = np.asarray(amass["trans"], np.float32)
    out["betas"] = np.broadcast_to(np.asarray(amass["betas"], np.float32), (t, np.asarray(amass["betas"]).size)).copy()
    return out


# ------------------------------------------------------------------------------ cameras and objects


def camera_record(viewmats: Float[np.ndarray, "T 4 4"], camera, frame_rate: float | None) -> dict:
    """Cameras of one seed as plain JSON data (intrinsics at the run's render size)."""
    k = np.asarray(camera.K, float)
    return {
        "convention": OPENCV_AXES,
        "width": int(camera.width),
        "height": int(camera.height),
        "fx": float(camera.fx), "fy": float(camera.fy), "cx": float(camera.cx), "cy": float(camera.cy),
        "K": k.tolist(),
        "frame_rate": frame_rate,
        "frames": [{"index": t, "world_to_camera": np.asarray(v, float).tolist(),
                    "camera_to_world": np.linalg.inv(np.asarray(v, float)).tolist()}
                   for t, v in enumerate(viewmats)],
    }  # fmt: skip


def object_record(object_poses: Float[np.ndarray, "T 4 4"], ply: Path, centroid: Float[np.ndarray, "3"],
                  frame_rate: float | None) -> dict:
    """Object poses of one seed: the run's object-to-world (object frame at the centroid of the
    PLY's Gaussians, as the reconstruction centres it) and the same pose for the PLY's own
    coordinates (object-to-world composed with the shift by -centroid)."""
    shift = np.eye(4)
    shift[:3, 3] = -np.asarray(centroid, float)
    return {
        "object_ply": str(ply),
        "ply_centroid": np.asarray(centroid, float).tolist(),
        "convention": "object_to_world maps points of the object frame, whose origin is the centroid of the "
                      "PLY's Gaussian centres, to world coordinates (metres); ply_to_world maps the PLY file's own "
                      "coordinates: ply_to_world = object_to_world @ translate(-ply_centroid)",
        "frame_rate": frame_rate,
        "frames": [{"index": t, "object_to_world": np.asarray(p, float).tolist(),
                    "ply_to_world": (np.asarray(p, float) @ shift).tolist()}
                   for t, p in enumerate(object_poses)],
    }  # fmt: skip


def ply_centroid(path: Path) -> Float[np.ndarray, "3"]:
    return np.asarray(load_ply(path).means, np.float64).mean(axis=0)


# ------------------------------------------------------------------------------ the command


def export_run(run_dir, fmt: str, out=None, *, stage: str = "refined", fps: float | None = None,
               config=None, camera=None) -> list[Path]:
    """Write `fmt` files for every seed of a finished run into `out` (default RUN_DIR/export)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if stage not in ("refined", "stage2"):
        raise ValueError(f"--stage must be 'refined' or 'stage2', got {stage!r}")
    if fps is not None and not fps > 0:
        raise ValueError(f"--fps must be positive, got {fps}")
    run = load_run(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / "export"
    written: list[Path] = []
    if fmt in ("amass", "smplx"):
        cfg = _optional_config(run_dir, config)
        rate = resolve_frame_rate(run, cfg, fps)
        for s, seed in enumerate(run.seeds):
            params = seed.poses[stage]
            source = f"{run.root / f'seed_{s}'}/{stage}"
            if fmt == "amass":
                written.append(save_npz(out / f"amass_seed_{s}.npz",
                                        **amass_arrays(params, gender=run.gender, frame_rate=rate, source=source)))
            else:
                written.append(save_npz(out / f"smplx_seed_{s}.npz", **params))
                written.append(save_json(out / f"smplx_seed_{s}.json", {
                    "model": "SMPL-X", "gender": run.gender, "num_betas": run.num_betas, "use_pca": False,
                    "flat_hand_mean": True, "frame_rate": rate, "stage": stage, "frames": run.frames,
                    "usage": "smplx.SMPLX(model_path, gender=..., num_betas=..., use_pca=False, "
                             "flat_hand_mean=True)(**{k: torch.tensor(v) for k, v in np.load(npz).items()})",
                }))
        return written
    if fmt == "cameras":
        if camera is not None:
            cam = Camera.load_json(camera)
            if run.image_size is not None:
                cam = cam.resized(*run.image_size)
            cfg = _optional_config(run_dir, config)
        else:
            cfg = load_config_of(run_dir, config, needed_for="exporting cameras (their intrinsics)")
            cam = render_camera(cfg, run)
        rate = _rate_or_none(run, cfg, fps)
        for s, seed in enumerate(run.seeds):
            record = camera_record(seed.viewmats, cam, rate)
            written.append(save_json(out / f"cameras_seed_{s}.json", {"seed": s, **record}))
        return written
    # objects
    if not run.has_object:
        raise ValueError(f"{run.root}: this run has no dynamic object (a static scenario); nothing to export")
    cfg = load_config_of(run_dir, config, needed_for="exporting object poses (the object's PLY)")
    if cfg.object.ply is None:
        raise ValueError(f"{cfg.base_dir}/config.yaml: object.ply is null, but the run fitted an object; "
                         "set object.ply to the object's file")
    ply = cfg.path(cfg.object.ply).resolve()
    if not ply.is_file():
        raise FileNotFoundError(f"object file {ply} (object.ply of the run's config) does not exist")
    centroid = ply_centroid(ply)
    rate = _rate_or_none(run, cfg, fps)
    for s, seed in enumerate(run.seeds):
        written.append(save_json(out / f"objects_seed_{s}.json",
                                 {"seed": s, **object_record(seed.object_poses, ply, centroid, rate)}))
    return written


def _optional_config(run_dir, config):
    try:
        return load_config_of(run_dir, config, needed_for="export")
    except FileNotFoundError:
        if config is not None:
            raise
        return None


def _rate_or_none(run: RunResults, cfg, fps) -> float | None:
    """Cameras and objects carry the frame rate when it is known; they are usable without it."""
    try:
        return resolve_frame_rate(run, cfg, fps)
    except ValueError:
        return None


__all__ = [
    "FORMATS",
    "FULL_POSE_ORDER",
    "amass_arrays",
    "camera_record",
    "export_run",
    "object_record",
    "smplx_keywords_from_amass",
    "subject_betas",
]
