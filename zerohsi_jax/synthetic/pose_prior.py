"""The demo's pose prior: a VPoser (v2 layout) trained on generated reach-and-lift motions.

The official VPoser V02_05 cannot be downloaded here, and a VPoser with random weights is no
prior at all (the refinement would fit joints through a meaningless decoder). This one is
trained on motions from the demo's own motion generator with random box placements and lift
targets, never on the sequence being reconstructed, as the official one is trained on AMASS and
not on the test video. Cached on disk: built once (~15 s on 2 CPU cores).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from ..body.synthetic import default_cache_dir
from ..body.vposer import VPoser


def _fingerprint(body_file: str, seed: int) -> str:
    here = Path(__file__).parent
    h = hashlib.sha256(f"{body_file}|{seed}".encode())
    for source in (here / "motion.py", here / "pose_prior.py", here.parent / "body" / "vposer_training.py"):
        h.update(source.read_bytes())
    return h.hexdigest()[:10]


def synthetic_pose_prior(body, *, body_file: str = "synthetic", seed: int = 0, cache_dir=None,
                         num_motions: int = 256) -> VPoser:
    """A VPoser fitted to generated reach-and-lift poses of `body`, cached under `cache_dir`."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"demo_vposer_{_fingerprint(body_file, seed)}.eqx"
    if path.exists():
        return VPoser.load(path)
    from ..body.vposer_training import train_vposer
    from .motion import reach_and_lift_poses

    poses = reach_and_lift_poses(body, num_motions, seed=seed + 1000)
    model, _ = train_vposer(poses, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        model.save(tmp, source="zerohsi_jax.synthetic.pose_prior: generated reach-and-lift motions")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return model
