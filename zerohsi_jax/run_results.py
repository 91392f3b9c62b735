"""A finished run folder read back for viewing and exporting, and the config that produced it.

The run folder contract is `zerohsi_jax.reconstruct.run_files`; the config (`config.yaml`, a
resolved `RunConfig`) sits in the folder above the run folder, where `reconstruct`, `continue`
and the demo write it. Nothing here guesses: an unfinished run, a missing file or an unknown frame
rate is an error that names the file and the fix.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from jaxtyping import Float

from .io import probe_video
from .reconstruct.run_files import IncompleteRunError, RunFolder
from .run_config import load_run_config
from .splat import Camera

SMPLX_KEYS = ("transl", "global_orient", "body_pose", "betas", "expression", "jaw_pose", "leye_pose", "reye_pose",
              "left_hand_pose", "right_hand_pose")
STAGES = {"refined": "smplx_params.npz", "stage2": "smplx_params_stage2.npz"}
"""The two pose sets of a run: after the refinement (stage 3) and after the per-frame HSI fit (stage 2)."""


@dataclasses.dataclass(frozen=True)
class SeedResults:
    """One seed (video) of a run: per-frame SMPL-X keyword arrays of both stages, object and camera."""

    poses: dict[str, dict[str, np.ndarray]]
    """`poses[stage][key]`: (T, n) arrays under `smplx.SMPLX`'s keyword names, stage in STAGES."""
    object_poses: Float[np.ndarray, "T 4 4"]
    """Object-to-world of every frame (the object frame is centred on its Gaussians' centroid)."""
    viewmats: Float[np.ndarray, "T 4 4"]
    """World-to-camera of every frame, OpenCV axes (x right, y down, z forward)."""


@dataclasses.dataclass(frozen=True)
class RunResults:
    root: Path
    seeds: tuple[SeedResults, ...]
    frames: int
    gender: str
    num_betas: int
    frame_rate: float | None
    """As the run recorded it (`complete.json`); None when the run did not know it."""
    image_size: tuple[int, int] | None
    """(width, height) the run rendered at (`run.json`), None for a folder without a manifest."""
    has_object: bool
    losses: dict[str, np.ndarray]
    """camera and hsi (S, T-1, iterations) for frames 1..T-1, refine (S, iterations); absent keys: none ran."""


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing {what}; the run folder is damaged: rerun the command that wrote it")
    return path


def load_run(run_dir) -> RunResults:
    """Read a finished run folder; `IncompleteRunError` for an unfinished one."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run folder {root} does not exist (the demo writes out/demo/run; "
                                "`reconstruct CONFIG` writes <output>/run)")
    summary = RunFolder(root).completion()
    n_seeds, n_frames = int(summary["seeds"]), int(summary["frames"])
    manifest_path = root / "run.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    size = manifest.get("size")
    seeds = []
    for s in range(n_seeds):
        d = root / f"seed_{s}"
        poses = {}
        for stage, name in STAGES.items():
            with np.load(_require_file(d / name, f"SMPL-X parameters ({stage})")) as f:
                missing = [k for k in ("transl", "global_orient", "body_pose", "betas") if k not in f.files]
                if missing:
                    raise ValueError(f"{d / name}: missing arrays {missing}; rerun the reconstruction")
                poses[stage] = {k: np.asarray(f[k], np.float32) for k in f.files}
        objects = np.load(_require_file(d / "object_poses.npy", "object poses"))
        viewmats = np.load(_require_file(d / "camera_viewmats.npy", "camera matrices"))
        for name, arr, want in (("object_poses.npy", objects, (n_frames, 4, 4)),
                                ("camera_viewmats.npy", viewmats, (n_frames, 4, 4)),
                                (STAGES["refined"], poses["refined"]["transl"], (n_frames, 3)),
                                (STAGES["stage2"], poses["stage2"]["transl"], (n_frames, 3))):
            if arr.shape != want:
                raise ValueError(f"{d / name}: shape {arr.shape}, but complete.json says {n_frames} frames "
                                 f"(expected {want}); the folder mixes two runs: rerun with --no-resume")
        seeds.append(SeedResults(poses, objects.astype(np.float64), viewmats.astype(np.float64)))
    losses = {}
    if (root / "losses.npz").is_file():
        with np.load(root / "losses.npz") as f:
            losses = {k: np.asarray(f[k]) for k in f.files}
    rate = summary.get("frame_rate")
    return RunResults(
        root=root, seeds=tuple(seeds), frames=n_frames, gender=str(summary.get("gender", "neutral")),
        num_betas=int(summary.get("num_betas", seeds[0].poses["refined"]["betas"].shape[-1])),
        frame_rate=None if rate is None else float(rate),
        image_size=None if size is None else (int(size[0]), int(size[1])),
        has_object=bool(manifest.get("object", True)),
        losses=losses,
    )


# ------------------------------------------------------------------------------ the config


def config_path_of(run_dir) -> Path:
    """Where `reconstruct`/`continue`/the demo put the resolved config of a run folder."""
    return Path(run_dir).resolve().parent / "config.yaml"


def load_config_of(run_dir, config=None, *, needed_for: str):
    """The RunConfig of a run (`config` overrides where it is looked for); an error saying what
    needs it and how to give it when there is none."""
    path = Path(config) if config is not None else config_path_of(run_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: {needed_for} needs the run's config (the scene, object, avatar and camera "
            f"files). `reconstruct` and the demo write it beside the run folder; pass --config CONFIG.yaml for a "
            "run made through the Python API"
        )
    return load_run_config(path)


def render_camera(cfg, run: RunResults):
    """The camera (intrinsics, image size) the run rendered at: the config's, at the run's size."""
    camera = Camera.load_json(cfg.path(cfg.camera))
    if run.image_size is not None:
        size = run.image_size
    elif cfg.render_size is not None:
        size = cfg.render_size
    else:
        size = (camera.width, camera.height)
    return camera.resized(int(size[0]), int(size[1]))


def video_frame_rate(cfg) -> float | None:
    """Frames per second of the kept frames: the first video's rate divided by video.stride; None
    when the video does not say (an image folder) or is not there."""
    if not cfg.video.paths:
        return None
    path = cfg.path(cfg.video.paths[0])
    if not path.exists():
        return None
    fps = probe_video(path).fps
    return None if not fps else float(fps) / cfg.video.stride


def resolve_frame_rate(run: RunResults, cfg=None, fps: float | None = None) -> float:
    """The motion's frame rate: `fps` when given, else the run's record, else the config's video
    (its rate / stride). Never a default: without any of them it is an error asking for --fps."""
    if fps is not None:
        if not fps > 0:
            raise ValueError(f"--fps must be positive, got {fps}")
        return float(fps)
    if run.frame_rate is not None:
        return run.frame_rate
    if cfg is not None:
        rate = video_frame_rate(cfg)
        if rate is not None:
            return rate
    raise ValueError(
        f"{run.root}: the frame rate of this run is unknown (complete.json has none"
        + ("" if cfg is None else ", and the config's video does not give one")
        + "); pass --fps (the video's frames per second divided by its stride, e.g. 30/3 = 10)"
    )


__all__ = [
    "STAGES",
    "IncompleteRunError",
    "RunResults",
    "SeedResults",
    "config_path_of",
    "load_config_of",
    "load_run",
    "render_camera",
    "resolve_frame_rate",
    "video_frame_rate",
]
