"""A synthetic SMPL-X-compatible body model file, for the demo and the tests.

The real SMPL-X files cannot be redistributed, so this module builds a stand-in with the official
`.npz` layout and sizes (10,475 vertices, 55 joints on the real kinematic tree, 400 shape and
expression directions, 486 pose directions, 45-D hand PCA, 51 face landmarks) that `smplx.SMPLX`
and `zerohsi_jax.body.SMPLX` both load, from the skeleton of `body_skeleton` and the mesh of
`body_mesh`. The joint regressor averages rings of vertices around each joint; smplx's hard-coded
extra-joint vertex ids (nose, eyes, ears, toes, heels, finger tips) are permuted onto the matching
places of this mesh. Files are cached under the package's cache root, keyed by the generator's code.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np

from ..body.joint_names import EXTRA_VERTEX_JOINTS, JOINT_NAMES, NUM_JOINTS, NUM_VERTICES, PARENTS, SHAPE_SPACE_DIM
from ..cache import cache_root
from ..files import save_npz
from .body_mesh import (
    build_parts,
    hand_pca,
    landmark_layout,
    mirror_hand,
    pose_directions,
    project_to_front,
    regressor_row,
    shape_directions,
    vertex_normals,
)
from .body_skeleton import FINGERS, JOINT_INDEX, SOLE_Y, unit


def build_synthetic_smplx(gender: str = "neutral", seed: int = 0, num_betas: int = SHAPE_SPACE_DIM) -> dict:
    """The arrays of a synthetic SMPL-X model file (see the module docstring)."""
    gender = gender.lower()
    if gender not in ("neutral", "male", "female"):
        raise ValueError(f"gender must be neutral, male or female, got {gender!r}")
    if num_betas not in (10, SHAPE_SPACE_DIM):
        raise ValueError(
            "num_betas must be 300 (the SMPL-X v1.1 layout: 300 shape + 100 expression "
            f"directions) or 10 (the v1.0 layout: 10 + 10), got {num_betas}"
        )
    rng = np.random.default_rng(seed)
    parts, joints, tips, to_gender = build_parts(gender)
    offsets = np.cumsum([0] + [len(p.verts) for p in parts])
    verts = np.concatenate([p.verts for p in parts])
    faces = np.concatenate([p.faces + o for p, o in zip(parts, offsets[:-1], strict=True)])
    weights = np.concatenate([p.weights for p in parts])
    assert len(verts) == NUM_VERTICES, len(verts)

    # Everything is designed on the neutral body; the gender map moves vertices and joints at the end
    # and the regressor reproduces the mapped joints exactly.
    gendered_verts, gendered_joints = to_gender(verts), to_gender(joints)
    regressor = np.zeros((NUM_JOINTS, NUM_VERTICES))
    for p, o in zip(parts, offsets[:-1], strict=True):
        for j, ids in p.regress.items():
            regressor[j] = 0.0
            regressor[j, ids + o] = regressor_row(gendered_verts, ids + o, gendered_joints[j])
    missing = [JOINT_NAMES[j] for j in range(NUM_JOINTS) if not regressor[j].any()]
    assert not missing, missing

    # Special vertices smplx reads by id: choose them on this mesh, then permute them into place.
    core_n = len(parts[0].verts)
    part_index = {}
    k = 1
    for side in ("left", "right"):
        for name in ("leg", "arm", "palm", *FINGERS, "foot", "eye"):
            part_index[(side, name)] = k
            k += 1

    def part_ids(side, name):
        i = part_index[(side, name)]
        return np.arange(offsets[i], offsets[i + 1])

    head = np.arange(core_n)[verts[:core_n, 1] > 0.3]
    special = {}
    special["nose"] = head[np.argmax(verts[head, 2] - 5 * np.abs(verts[head, 0]))]
    for side, sgn in (("left", 1.0), ("right", -1.0)):
        eye = part_ids(side, "eye")
        special[f"{side[0]}eye"] = eye[np.argmax(verts[eye, 2])]
        ear_band = head[np.abs(verts[head, 1] - 0.385) < 0.01]
        special[f"{side[0]}ear"] = ear_band[np.argmax(sgn * verts[ear_band, 0])]
        for finger in FINGERS:
            ids = part_ids(side, finger)
            d = tips[(side, finger)] - joints[JOINT_INDEX[f"{side}_{finger}3"]]
            special[f"{side[0]}{finger}"] = ids[np.argmax(verts[ids] @ unit(d))]
        foot = part_ids(side, "foot")
        fv = verts[foot]
        low = fv[:, 1] < SOLE_Y + 0.012
        toe_score = fv[:, 2] - 0.5 * sgn * fv[:, 0]  # forward and towards the midline
        special[f"{side[0].upper()}BigToe"] = foot[np.argmax(np.where(low, toe_score, -np.inf))]
        small_score = fv[:, 2] + 0.8 * sgn * fv[:, 0]
        special[f"{side[0].upper()}SmallToe"] = foot[np.argmax(np.where(low, small_score, -np.inf))]
        special[f"{side[0].upper()}Heel"] = foot[np.argmax(np.where(low, -fv[:, 2], -np.inf))]
    smplx_keys = {
        "nose": "nose",
        "right_eye": "reye",
        "left_eye": "leye",
        "right_ear": "rear",
        "left_ear": "lear",
        "left_big_toe": "LBigToe",
        "left_small_toe": "LSmallToe",
        "left_heel": "LHeel",
        "right_big_toe": "RBigToe",
        "right_small_toe": "RSmallToe",
        "right_heel": "RHeel",
    }
    targets = {}
    for name, vid in EXTRA_VERTEX_JOINTS:
        key = smplx_keys.get(name) or f"{name[0]}{name.split('_')[1]}"
        targets[vid] = special[key]
    perm = np.full(NUM_VERTICES, -1)
    for vid, old in targets.items():
        perm[vid] = old
    rest_old = np.setdiff1d(np.arange(NUM_VERTICES), list(targets.values()))
    perm[perm < 0] = rest_old
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(NUM_VERTICES)
    verts, weights, regressor = verts[perm], weights[perm], regressor[:, perm]
    gendered_verts = gendered_verts[perm]
    faces = inverse[faces]
    core_mask = np.zeros(NUM_VERTICES, bool)
    core_mask[inverse[np.arange(core_n)]] = True

    normals = vertex_normals(verts, faces)

    # Face landmarks: project the 2D layout onto the front of the head.
    face_cand = np.nonzero(
        core_mask[faces].all(1)
        & (verts[faces].mean(1)[:, 1] > 0.30)
        & (
            np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])[:, 2]
            > 0
        )
    )[0]
    lmk_faces, lmk_bary = project_to_front(verts, faces, face_cand, landmark_layout())
    contour_xy = np.stack(
        [np.linspace(-0.07, 0.07, 17), 0.30 + 0.045 * np.abs(np.linspace(-1, 1, 17)) ** 1.5], -1
    )
    contour_faces, contour_bary = project_to_front(verts, faces, face_cand, contour_xy)
    dyn_faces = np.repeat(contour_faces[None], 79, 0)
    dyn_bary = np.repeat(contour_bary[None], 79, 0)

    shapedirs = shape_directions(verts, normals, weights, joints, core_mask, rng, num_betas)
    posedirs = pose_directions(normals, weights, rng)
    comps_l, mean_l = hand_pca(rng)

    kintree = np.stack([np.array(PARENTS, dtype=np.int64), np.arange(NUM_JOINTS, dtype=np.int64)])
    kintree[0, 0] = 4294967295  # the official files store the root's parent as uint32 -1
    return {
        "v_template": gendered_verts.astype(np.float64),
        "f": faces.astype(np.uint32),
        "weights": weights.astype(np.float64),
        "J_regressor": regressor.astype(np.float64),
        "kintree_table": kintree,
        "shapedirs": shapedirs.astype(np.float32),
        "posedirs": posedirs.astype(np.float32),
        "hands_componentsl": comps_l,
        "hands_componentsr": mirror_hand(comps_l),
        "hands_meanl": mean_l,
        "hands_meanr": mirror_hand(mean_l),
        "lmk_faces_idx": lmk_faces.astype(np.int64),
        "lmk_bary_coords": lmk_bary.astype(np.float64),
        "dynamic_lmk_faces_idx": dyn_faces.astype(np.int64),
        "dynamic_lmk_bary_coords": dyn_bary.astype(np.float64),
        "gender": np.array(gender),
    }


def write_synthetic_smplx(
    path, gender: str = "neutral", seed: int = 0, num_betas: int = SHAPE_SPACE_DIM
) -> Path:
    """Write a synthetic SMPL-X `.npz` to `path` (a file, or a folder that gets SMPLX_<GENDER>.npz).

    Name files SMPLX_NEUTRAL.npz / SMPLX_MALE.npz / SMPLX_FEMALE.npz so that `smplx.create` infers
    the model type. num_betas is 300 (v1.1 layout, shapedirs (10475, 3, 400)) or 10 (v1.0 layout,
    (10475, 3, 20)).
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path / f"SMPLX_{gender.upper()}.npz"
    # Atomic: concurrent test workers never read a half-written file.
    return save_npz(path, **build_synthetic_smplx(gender=gender, seed=seed, num_betas=num_betas))


# The generator's code: a cached model is regenerated whenever any of it changes.
GENERATOR_SOURCES = (
    Path(__file__).with_name("body_skeleton.py"),
    Path(__file__).with_name("body_mesh.py"),
    Path(__file__),
    Path(__file__).parents[1] / "body" / "joint_names.py",
)


def _generator_fingerprint() -> str:
    """Short hash of `GENERATOR_SOURCES`."""
    digest = hashlib.sha1()
    for source in GENERATOR_SOURCES:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:10]


def synthetic_smplx_path(
    cache_dir=None, gender: str = "neutral", seed: int = 0, num_betas: int = SHAPE_SPACE_DIM
) -> Path:
    """Path of a cached synthetic model file, written on first use (cache_dir defaults to
    $ZEROHSI_JAX_CACHE or ~/.cache/zerohsi_jax). The folder name carries the seed, the layout and a
    hash of the generator, and files are written atomically, so concurrent callers are safe."""
    cache = Path(cache_dir) if cache_dir is not None else cache_root()
    folder = cache / f"synthetic_smplx_{_generator_fingerprint()}_seed{seed}_b{num_betas}"
    path = folder / f"SMPLX_{gender.upper()}.npz"
    if not path.exists():
        write_synthetic_smplx(path, gender=gender, seed=seed, num_betas=num_betas)
        _remove_stale_caches(cache, folder.name.split("_")[2])
    return path


def _remove_stale_caches(cache: Path, fingerprint: str) -> None:
    """Best-effort removal of files written by older versions of the generator (~120 MB each)."""
    for old in cache.glob("synthetic_smplx_*"):
        parts = old.name.split("_")
        if old.is_dir() and len(parts) > 2 and parts[2] != fingerprint:
            shutil.rmtree(old, ignore_errors=True)
