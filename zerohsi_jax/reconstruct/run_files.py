"""The run folder: one file per finished frame, a rolling resume state, and the final results.

    run.json                      what was run (frames, seeds, image size, config): resume checks it
    frames/frame_0007.npz         stage-1/2 results of frame 7 for every seed (written when it ends)
    resume/color_net.eqx          the colour nets after the newest finished frame (+ its index)
    seed_0/smplx_params.npz       refined SMPL-X parameters, keys as `smplx.SMPLX` takes them
    seed_0/smplx_params_stage2.npz
    seed_0/object_poses.npy       (T, 4, 4) object-to-world
    seed_0/camera_viewmats.npy    (T, 4, 4) world-to-camera (OpenCV axes)
    timings.json

Every file is written beside its target and renamed into place, so a file that exists is whole.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import equinox as eqx
import numpy as np


def atomic_write(path: Path, write) -> Path:
    """Call `write(tmp_path)` and rename the result to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_npz(path: Path, **arrays) -> Path:
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)


def save_json(path: Path, obj) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2)))


class RunFolder:
    def __init__(self, root):
        self.root = Path(root)

    def frame_path(self, t: int) -> Path:
        return self.root / "frames" / f"frame_{t:04d}.npz"

    def seed_dir(self, s: int) -> Path:
        return self.root / f"seed_{s}"

    # ------------------------------------------------------------------------- identity of a run
    def check_or_write_manifest(self, manifest: dict, resume: bool) -> None:
        path = self.root / "run.json"
        if path.exists() and resume:
            old = json.loads(path.read_text())
            diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
            if diff:
                raise ValueError(
                    f"{path}: this folder holds a different run (differs in {diff}); "
                    "pick a new output folder or pass --no-resume to start over"
                )
            return
        if path.exists() and not resume:
            for stale in sorted((self.root / "frames").glob("frame_*.npz")):
                stale.unlink()
            (self.root / "resume" / "color_net.eqx").unlink(missing_ok=True)
            (self.root / "resume" / "color_net.json").unlink(missing_ok=True)
        save_json(path, manifest)

    # ------------------------------------------------------------------------------- frames
    def write_frame(self, t: int, arrays: dict) -> None:
        save_npz(self.frame_path(t), **{k: np.asarray(v) for k, v in arrays.items()})

    def read_frame(self, t: int) -> dict:
        with np.load(self.frame_path(t)) as f:
            return {k: f[k] for k in f.files}

    def write_color_state(self, t: int, color) -> None:
        atomic_write(self.root / "resume" / "color_net.eqx", lambda tmp: eqx.tree_serialise_leaves(tmp, color))
        save_json(self.root / "resume" / "color_net.json", {"frame": t})

    def resumable_frame(self) -> int | None:
        """The newest frame whose results and colour nets are both on disk (frames 0..t all exist)."""
        meta = self.root / "resume" / "color_net.json"
        if not meta.exists() or not (self.root / "resume" / "color_net.eqx").exists():
            return None
        t = int(json.loads(meta.read_text())["frame"])
        if not all(self.frame_path(i).exists() for i in range(t + 1)):
            return None
        return t

    def read_color_state(self, like):
        return eqx.tree_deserialise_leaves(self.root / "resume" / "color_net.eqx", like)
