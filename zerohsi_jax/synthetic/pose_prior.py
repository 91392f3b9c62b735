"""The demo's pose prior: a VPoser (v2 layout) trained on generated reach-and-lift motions.

The official VPoser V02_05 cannot be downloaded here, and a VPoser with random weights is no
prior at all (the refinement would fit joints through a meaningless decoder). This one is
trained on motions from the demo's own motion generator with random box placements and lift
targets, never on the sequence being reconstructed, as the official one is trained on AMASS and
not on the test video. Cached on disk: built once (~15 s on 2 CPU cores).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from ..body.vposer import VPoser
from ..cache import cache_root
from ..files import atomic_write

# The code that produces a prior, relative to the package: the motion generator and what it calls
# (the body model's forward, the skinning kinematics), the training, and the VPoser module itself
# (its architecture and its file format). All of it is in the cache key, so an edit to any of it
# trains a new prior instead of loading an old one. tests/test_vposer.py checks this list against
# the code that runs while a prior is built.
_PACKAGE = Path(__file__).resolve().parents[1]
PRODUCERS = (
    "synthetic/pose_prior.py",
    "synthetic/motion.py",
    "body/smplx_model.py",
    "body/lbs.py",
    "geometry.py",
    "avatar/skinning.py",
    "body/vposer.py",
    "body/vposer_training.py",
)


def _fingerprint(body, seed: int, num_motions: int) -> str:
    """Hash of everything the prior depends on: the producing code (PRODUCERS), the body model
    (its arrays and options), the seed and the number of motions."""
    h = hashlib.sha256(repr((seed, num_motions)).encode())
    for name in PRODUCERS:
        h.update(name.encode() + b"\0" + (_PACKAGE / name).read_bytes() + b"\0")
    arrays, options = eqx.partition(body, eqx.is_array)
    h.update(str(jax.tree.structure(options)).encode())  # static options: gender, hand PCA, sizes
    for leaf in jax.tree.leaves(arrays):
        a = np.ascontiguousarray(leaf)
        h.update(repr((a.shape, a.dtype.str)).encode() + a.tobytes())
    return h.hexdigest()[:16]


def _build(body, seed: int, num_motions: int, **training) -> VPoser:
    """Generate the motions and train (`training`: keywords of `train_vposer`, for tests)."""
    from ..body.vposer_training import train_vposer
    from .motion import reach_and_lift_poses

    poses = reach_and_lift_poses(body, num_motions, seed=seed + 1000)
    model, _ = train_vposer(poses, seed=seed, **training)
    return model


def synthetic_pose_prior(body, *, seed: int = 0, cache_dir=None, num_motions: int = 256) -> VPoser:
    """A VPoser fitted to generated reach-and-lift poses of `body`, cached under `cache_dir`."""
    cache = Path(cache_dir) if cache_dir is not None else cache_root()
    path = cache / f"demo_vposer_{_fingerprint(body, seed, num_motions)}.eqx"
    if path.exists():
        return VPoser.load(path)
    model = _build(body, seed, num_motions)
    source = "zerohsi_jax.synthetic.pose_prior: generated reach-and-lift motions"
    atomic_write(path, lambda tmp: model.save(tmp, source=source))
    return model
