"""SMPL-X in pure JAX: model file loading and the linear-blend-skinning forward pass.

The forward pass reproduces smplx 0.1.28's `SMPLX.forward` (default options, no face contour):
shape and expression blend shapes, Rodrigues rotations, pose blend shapes, the rigid transforms down
the kinematic tree, skinning, then the 21 extra vertex joints and the 51 face landmarks appended to
the 55 tree joints (127 in all) and `transl` added last. The steps are `lbs`'s functions; this module
loads and checks model files and strings the steps together.

Exact reorganisations make it cheaper than smplx without changing the result:
- Joints are linear in the shape coefficients, so `J_regressor @ v_template` and
  `J_regressor @ shapedirs` are folded at load time (no (55 x 10475) product per call).
- The kinematic chain is evaluated level by level (11 levels for SMPL-X's 55 joints), each level
  one batched 3x3 product, instead of one product per joint.
- Per-vertex arrays are kept coordinate-major, (batch, 3, 10475), until the end: the blend-shape and
  skinning products become plain 2-D matrix products with the long vertex axis innermost, and
  applying the blended 3x4 transforms is a vectorised multiply-add instead of 10,475 tiny products.
  Shape, expression and pose blend shapes are one product with the stacked directions.
- Skinning runs over the batch in chunks of 8 (rematerialised in the backward pass), so the largest
  temporaries stay small; large per-call temporaries otherwise cost more in fresh-page faults than
  in arithmetic on the CPU.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ..errors import UserError
from ..geometry import axis_angle_to_matrix, rigid
from . import lbs
from .joint_names import (
    EXPRESSION_SPACE_DIM,
    EXTRA_VERTEX_IDS,
    FOOT_JOINTS,
    HAND_JOINTS,
    NUM_BODY_JOINTS,
    NUM_HAND_JOINTS,
    NUM_JOINTS,
    NUM_LANDMARKS,
    NUM_POSE_FEATURES,
    NUM_VERTICES,
    SHAPE_SPACE_DIM,
)

SMPLX_DOWNLOAD_HELP = (
    "SMPL-X model files are not redistributable: register at https://smpl-x.is.tue.mpg.de, download "
    "'SMPL-X v1.1 (NPZ+PKL)' and point the config at SMPLX_NEUTRAL.npz (or SMPLX_MALE.npz / "
    "SMPLX_FEMALE.npz). If you only have the .pkl files, convert them with "
    "`python -m converters.smplx_pkl_to_npz SMPLX_NEUTRAL.pkl SMPLX_NEUTRAL.npz` (needs torch-free "
    "numpy/scipy only, no chumpy). For tests and the demo, "
    "`zerohsi_jax.synthetic.synthetic_smplx_path()` writes a synthetic stand-in with the same layout."
)


class ModelFileError(UserError, ValueError):
    """A body model file is missing a key, or a key has the wrong shape or type."""


class ModelFileNotFoundError(UserError, FileNotFoundError):
    """The configured body model file does not exist."""


class SMPLXOutput(eqx.Module):
    """Result of `SMPLX.__call__`; leading axes follow the (broadcast) batch shape of the inputs.

    joint_transforms[j] is the world-space rigid transform of joint j, `transl` included: a point x
    attached to joint j in the shaped rest pose moves to joint_transforms[j] @ [x, 1] (without pose
    blend shapes), and vertices = sum_j weights[:, j] * joint_transforms[j] @ [v_shaped + pose_offsets, 1].
    """

    vertices: Float[Array, "*batch 10475 3"]
    joints: Float[Array, "*batch 127 3"]
    joint_transforms: Float[Array, "*batch 55 4 4"]
    v_shaped: Float[Array, "*batch 10475 3"]  # template + shape AND expression blend shapes
    rest_joints: Float[Array, "*batch 55 3"]  # joints regressed from v_shaped
    full_pose: Float[Array, "*batch 55 3"]  # axis-angle of every joint, hand PCA and mean applied


class SMPLX(eqx.Module):
    """The SMPL-X body model (arrays are pytree leaves; options are static).

    Create with `SMPLX.load(path, ...)`; call with smplx's keyword names. Inputs may be unbatched
    (e.g. betas (num_betas,)) or carry any leading batch shape, broadcast against each other;
    missing inputs are zeros.
    """

    v_template: Float[Array, "10475 3"]
    # Coordinate-major copies for the forward pass: index c * 10475 + v.
    template_cm: Float[Array, " V3"]
    # Shape, expression and pose blend directions stacked, (num_betas + num_expr + 486, 3 * 10475):
    # the posed rest mesh is one matrix product of [betas, expression, pose feature] with it.
    blend_dirs: Float[Array, "D V3"]
    joint_template: Float[Array, "55 3"]  # J_regressor @ v_template
    joint_shapedirs: Float[Array, "S 165"]  # J_regressor @ shapedirs
    J_regressor: Float[Array, "55 10475"]
    lbs_weights: Float[Array, "10475 55"]
    weights_t: Float[Array, "55 10475"]
    faces: Int[Array, "F 3"]
    parents: Int[Array, " 55"]
    left_hand_components: Float[Array, "C 45"] | None
    right_hand_components: Float[Array, "C 45"] | None
    left_hand_mean: Float[Array, " 45"]
    right_hand_mean: Float[Array, " 45"]
    extra_vertex_ids: Int[Array, " 21"]
    landmark_vertex_ids: Int[Array, "51 3"]
    landmark_bary_coords: Float[Array, "51 3"]

    num_betas: int = eqx.field(static=True)
    num_expression_coeffs: int = eqx.field(static=True)
    use_pca: bool = eqx.field(static=True)
    num_pca_comps: int = eqx.field(static=True)
    flat_hand_mean: bool = eqx.field(static=True)
    gender: str = eqx.field(static=True)
    parent_tuple: tuple[int, ...] = eqx.field(static=True)

    # ---------------------------------------------------------------------------------- loading

    @classmethod
    def load(
        cls,
        path,
        num_betas: int = 10,
        num_expression_coeffs: int = 10,
        use_pca: bool = True,
        num_pca_comps: int = 6,
        flat_hand_mean: bool = False,
        gender: str = "neutral",
        dtype=jnp.float32,
    ) -> SMPLX:
        """Load an SMPL-X `.npz` (a file, or a folder holding SMPLX_<GENDER>.npz)."""
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / f"SMPLX_{gender.upper()}.npz"
        if not path.exists():
            raise ModelFileNotFoundError(f"SMPL-X model file not found: {path}. {SMPLX_DOWNLOAD_HELP}")
        if path.suffix == ".pkl":
            raise ModelFileError(
                f"{path}: official .pkl files hold chumpy objects; convert it once with "
                f"`python -m converters.smplx_pkl_to_npz {path} {path.with_suffix('.npz')}` "
                "and load the .npz."
            )
        try:
            npz = np.load(path, allow_pickle=False)
        except Exception as err:  # not a zip / corrupt download
            raise ModelFileError(
                f"{path}: cannot be read as an .npz archive ({err}). {SMPLX_DOWNLOAD_HELP}"
            ) from err
        with npz:
            arrays = {}
            for key in npz.files:
                try:
                    arrays[key] = npz[key]
                except ValueError:
                    # Object arrays (pickled extras such as joint2num) are not needed; keep them out.
                    continue
        if "gender" in arrays and arrays["gender"].shape == () and gender == "neutral":
            gender = str(arrays["gender"])
        return cls.from_arrays(
            arrays,
            source=str(path),
            num_betas=num_betas,
            num_expression_coeffs=num_expression_coeffs,
            use_pca=use_pca,
            num_pca_comps=num_pca_comps,
            flat_hand_mean=flat_hand_mean,
            gender=gender,
            dtype=dtype,
        )

    @classmethod
    def from_arrays(
        cls,
        data: dict,
        source: str = "<arrays>",
        num_betas: int = 10,
        num_expression_coeffs: int = 10,
        use_pca: bool = True,
        num_pca_comps: int = 6,
        flat_hand_mean: bool = False,
        gender: str = "neutral",
        dtype=jnp.float32,
    ) -> SMPLX:
        """Build the model from the arrays of an SMPL-X file (checked key by key)."""
        get = _KeyChecker(data, source)
        v_template = get("v_template", (NUM_VERTICES, 3))
        shapedirs = get("shapedirs", (NUM_VERTICES, 3, None))
        total_dirs = shapedirs.shape[-1]
        # smplx's rule: a file with fewer than 400 directions is the 10 shape + 10 expression layout.
        if total_dirs >= SHAPE_SPACE_DIM + EXPRESSION_SPACE_DIM:
            shape_cap, expr_start, expr_cap = SHAPE_SPACE_DIM, SHAPE_SPACE_DIM, EXPRESSION_SPACE_DIM
        elif total_dirs >= 20:
            shape_cap, expr_start, expr_cap = 10, 10, 10
        else:
            raise ModelFileError(
                f"{source}: key 'shapedirs' has shape {shapedirs.shape}, expected (10475, 3, 400) "
                "(300 shape + 100 expression directions) or (10475, 3, 20) (10 + 10)"
            )
        if num_betas > shape_cap or num_expression_coeffs > expr_cap:
            warnings.warn(
                f"{source} has {shape_cap} shape and {expr_cap} expression directions; using "
                f"num_betas={min(num_betas, shape_cap)}, "
                f"num_expression_coeffs={min(num_expression_coeffs, expr_cap)}",
                stacklevel=2,
            )
        num_betas = min(num_betas, shape_cap)
        num_expression_coeffs = min(num_expression_coeffs, expr_cap)
        dirs = np.concatenate(
            [shapedirs[:, :, :num_betas], shapedirs[:, :, expr_start : expr_start + num_expression_coeffs]],
            axis=-1,
        ).astype(np.float64)
        posedirs = get("posedirs", (NUM_VERTICES, 3, NUM_POSE_FEATURES))
        regressor = get("J_regressor", (NUM_JOINTS, NUM_VERTICES))
        weights = get("weights", (NUM_VERTICES, NUM_JOINTS))
        kintree = get("kintree_table", (2, NUM_JOINTS), kind="int")
        faces = get("f", (None, 3), kind="int")
        lmk_faces = get("lmk_faces_idx", (NUM_LANDMARKS,), kind="int")
        lmk_bary = get("lmk_bary_coords", (NUM_LANDMARKS, 3))
        hands = {}
        for side in ("l", "r"):
            hands[f"components{side}"] = get(f"hands_components{side}", (None, 3 * NUM_HAND_JOINTS))
            hands[f"mean{side}"] = get(f"hands_mean{side}", (3 * NUM_HAND_JOINTS,))
        if use_pca and not 1 <= num_pca_comps <= hands["componentsl"].shape[0]:
            raise ValueError(
                f"num_pca_comps must be in 1..{hands['componentsl'].shape[0]}, got {num_pca_comps}"
            )

        parents = kintree[0].astype(np.int64)
        parents[0] = -1  # official files store uint32(-1)
        if np.any(parents[1:] >= np.arange(1, NUM_JOINTS)) or np.any(parents[1:] < 0):
            raise ModelFileError(
                f"{source}: key 'kintree_table' row 0 must list each joint's parent before it"
            )
        if faces.min() < 0 or faces.max() >= NUM_VERTICES:
            raise ModelFileError(f"{source}: key 'f' indexes vertices outside 0..{NUM_VERTICES - 1}")
        if lmk_faces.min() < 0 or lmk_faces.max() >= len(faces):
            raise ModelFileError(f"{source}: key 'lmk_faces_idx' indexes faces outside 0..{len(faces) - 1}")

        joint_template, joint_shapedirs = lbs.fold_joint_regressor(regressor, v_template, dirs)
        f = lambda a: jnp.asarray(np.asarray(a), dtype=dtype)  # noqa: E731
        i32 = lambda a: jnp.asarray(np.asarray(a, dtype=np.int64).astype(np.int32))  # noqa: E731
        n_dirs = dirs.shape[-1]
        comps = {s: hands[f"components{s}"][:num_pca_comps] for s in ("l", "r")}
        means = {s: np.zeros(45) if flat_hand_mean else hands[f"mean{s}"] for s in ("l", "r")}
        return cls(
            v_template=f(v_template),
            template_cm=f(np.asarray(v_template).T.reshape(-1)),
            blend_dirs=f(
                np.concatenate(
                    [
                        dirs.transpose(2, 1, 0).reshape(n_dirs, 3 * NUM_VERTICES),
                        np.asarray(posedirs).transpose(2, 1, 0).reshape(NUM_POSE_FEATURES, 3 * NUM_VERTICES),
                    ]
                )
            ),
            joint_template=f(joint_template),
            joint_shapedirs=f(joint_shapedirs),
            J_regressor=f(regressor),
            lbs_weights=f(weights),
            weights_t=f(np.asarray(weights).T),
            faces=i32(faces),
            parents=i32(parents),
            left_hand_components=f(comps["l"]) if use_pca else None,
            right_hand_components=f(comps["r"]) if use_pca else None,
            left_hand_mean=f(means["l"]),
            right_hand_mean=f(means["r"]),
            extra_vertex_ids=i32(EXTRA_VERTEX_IDS),
            landmark_vertex_ids=i32(np.asarray(faces, dtype=np.int64)[lmk_faces]),
            landmark_bary_coords=f(lmk_bary),
            num_betas=int(num_betas),
            num_expression_coeffs=int(num_expression_coeffs),
            use_pca=bool(use_pca),
            num_pca_comps=int(num_pca_comps) if use_pca else 3 * NUM_HAND_JOINTS,
            flat_hand_mean=bool(flat_hand_mean),
            gender=str(gender),
            parent_tuple=tuple(int(p) for p in parents),
        )

    # ---------------------------------------------------------------------------------- forward

    @property
    def shapedirs(self) -> Float[Array, "S V3"]:
        """Shape then expression directions, coordinate-major (index c * 10475 + v)."""
        return self.blend_dirs[: self.num_betas + self.num_expression_coeffs]

    @property
    def posedirs(self) -> Float[Array, "486 V3"]:
        """Pose blend directions, coordinate-major (index c * 10475 + v)."""
        return self.blend_dirs[self.num_betas + self.num_expression_coeffs :]

    @property
    def hand_pose_dim(self) -> int:
        return self.num_pca_comps if self.use_pca else 3 * NUM_HAND_JOINTS

    def __call__(
        self,
        betas=None,
        expression=None,
        global_orient=None,
        body_pose=None,
        jaw_pose=None,
        leye_pose=None,
        reye_pose=None,
        left_hand_pose=None,
        right_hand_pose=None,
        transl=None,
    ) -> SMPLXOutput:
        dtype = self.v_template.dtype
        specs = {
            "betas": (betas, self.num_betas),
            "expression": (expression, self.num_expression_coeffs),
            "global_orient": (global_orient, 3),
            "body_pose": (body_pose, 3 * NUM_BODY_JOINTS),
            "jaw_pose": (jaw_pose, 3),
            "leye_pose": (leye_pose, 3),
            "reye_pose": (reye_pose, 3),
            "left_hand_pose": (left_hand_pose, self.hand_pose_dim),
            "right_hand_pose": (right_hand_pose, self.hand_pose_dim),
            "transl": (transl, 3),
        }
        flat, batch_shapes = {}, []
        for name, (value, size) in specs.items():
            if value is None:
                continue
            value = jnp.asarray(value, dtype=dtype)
            per_joint = name in ("body_pose", "left_hand_pose", "right_hand_pose")
            if per_joint and value.ndim >= 2 and value.shape[-1] == 3 and value.shape[-2] * 3 == size:
                value = value.reshape(*value.shape[:-2], size)  # (..., 21, 3) body pose, (..., 15, 3) hands
            if value.ndim == 0 or value.shape[-1] != size:
                raise ValueError(f"{name} must have trailing size {size}, got shape {value.shape}")
            flat[name] = value
            batch_shapes.append(value.shape[:-1])
        batch_shape = tuple(np.broadcast_shapes(*batch_shapes)) if batch_shapes else ()
        n = int(np.prod(batch_shape)) if batch_shape else 1
        args = {}
        for name, (_, size) in specs.items():
            value = flat.get(name)
            if value is None:
                args[name] = jnp.zeros((n, size), dtype)
            else:
                args[name] = jnp.broadcast_to(value, batch_shape + (size,)).reshape(n, size)
        # Eager calls run the compiled forward; inside a caller's transformation (jit, grad, vmap) we
        # trace the body directly, so unused outputs are pruned and XLA fuses across the boundary.
        traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves((self, args)))
        out = self._forward(**args) if traced else _jitted_forward(self, **args)
        return jax.tree_util.tree_map(lambda a: a.reshape(batch_shape + a.shape[1:]), out)

    def _forward(
        self,
        betas,
        expression,
        global_orient,
        body_pose,
        jaw_pose,
        leye_pose,
        reye_pose,
        left_hand_pose,
        right_hand_pose,
        transl,
    ) -> SMPLXOutput:
        n = betas.shape[0]
        full_pose, coeffs, rest_joints, pose_feature, world_rot, world_pos, rel_trans = self._articulate(
            betas, expression, global_orient, body_pose, jaw_pose, leye_pose, reye_pose, left_hand_pose,
            right_hand_pose,
        )  # fmt: skip
        # (n, 3 * V), coordinate-major. v_shaped below is only evaluated when the caller uses it.
        features = jnp.concatenate([coeffs, pose_feature], axis=-1)
        v_posed = lbs.blend_shapes(self.template_cm, features, self.blend_dirs).reshape(n, 3, NUM_VERTICES)
        v_shaped = lbs.blend_shapes(self.template_cm, coeffs, self.shapedirs)
        vertices = lbs.linear_blend_skinning(world_rot, rel_trans, v_posed, self.weights_t) + transl[:, None, :]

        extra = vertices[:, self.extra_vertex_ids]
        landmarks = jnp.einsum(
            "nlkc,lk->nlc", vertices[:, self.landmark_vertex_ids], self.landmark_bary_coords
        )
        joints = jnp.concatenate([world_pos + transl[:, None, :], extra, landmarks], axis=1)

        return SMPLXOutput(
            vertices=vertices,
            joints=joints,
            joint_transforms=rigid(world_rot, rel_trans + transl[:, None, :]),
            v_shaped=v_shaped.reshape(n, 3, NUM_VERTICES).transpose(0, 2, 1),
            rest_joints=rest_joints,
            full_pose=full_pose,
        )

    def _articulate(self, betas, expression, global_orient, body_pose, jaw_pose, leye_pose, reye_pose,
                    left_hand_pose, right_hand_pose):
        """Full pose, shape coefficients, rest joints, pose feature and the kinematic chain: the
        part of the forward that does not touch vertices."""
        if self.use_pca:
            left_hand_pose = left_hand_pose @ self.left_hand_components
            right_hand_pose = right_hand_pose @ self.right_hand_components
        full_pose = lbs.assemble_full_pose(
            global_orient, body_pose, jaw_pose, leye_pose, reye_pose,
            left_hand_pose + self.left_hand_mean, right_hand_pose + self.right_hand_mean,
        )  # fmt: skip
        coeffs = jnp.concatenate([betas, expression], axis=-1)
        rest_joints = lbs.regress_joints(self.joint_template, self.joint_shapedirs, coeffs)
        rot = axis_angle_to_matrix(full_pose)  # (n, 55, 3, 3)
        pose_feature = lbs.pose_feature(rot)
        world_rot, world_pos, rel_trans = lbs.forward_kinematics(rot, rest_joints, self.parent_tuple)
        return full_pose, coeffs, rest_joints, pose_feature, world_rot, world_pos, rel_trans

    def vertex_subset(self, vertex_ids) -> SMPLXVertexSubset:
        """A model that poses only `vertex_ids` (and the 55 skeleton joints): for losses that read a
        few hundred vertices (hands, feet) in a loop, at a fraction of the full mesh's cost."""
        ids = np.asarray(vertex_ids, np.int64)
        cols = np.concatenate([c * NUM_VERTICES + ids for c in range(3)])
        return SMPLXVertexSubset(self, self.template_cm[cols], self.blend_dirs[:, cols], self.weights_t[:, ids])


class SMPLXVertexSubset(eqx.Module):
    """`SMPLX.vertex_subset(ids)`: the skeleton and a subset of the vertices, posed exactly as the
    full model poses them (same blend shapes and skinning). Body-model keywords as `SMPLX`."""

    body: SMPLX
    template_cm: Float[Array, " K3"]
    blend_dirs: Float[Array, "D K3"]
    weights_t: Float[Array, "55 K"]

    def __call__(self, global_orient, body_pose, transl, betas=None):
        """(joints (n, 55, 3), vertices (n, K, 3)) in world coordinates, for (n, ...) inputs."""
        body = self.body
        n = body_pose.shape[0]
        dtype = body.v_template.dtype
        zeros = lambda k: jnp.zeros((n, k), dtype)  # noqa: E731
        betas = zeros(body.num_betas) if betas is None else jnp.broadcast_to(betas, (n, body.num_betas))
        _, coeffs, _, pose_feature, world_rot, world_pos, rel_trans = body._articulate(
            betas, zeros(body.num_expression_coeffs), global_orient, body_pose, zeros(3), zeros(3), zeros(3),
            zeros(body.hand_pose_dim), zeros(body.hand_pose_dim),
        )  # fmt: skip
        k = self.weights_t.shape[1]
        features = jnp.concatenate([coeffs, pose_feature], axis=-1)
        v_posed = lbs.blend_shapes(self.template_cm, features, self.blend_dirs).reshape(n, 3, k)
        vertices = lbs.linear_blend_skinning(world_rot, rel_trans, v_posed, self.weights_t, chunk=None)
        return world_pos + transl[:, None, :], vertices + transl[:, None, :]


# Compiled once per model configuration and batch size, with the model's arrays as arguments (not
# constants baked into the program, which would make compilation slow). Eager calls get compiled
# speed; inside a caller's jit/vmap/grad it simply inlines.
_jitted_forward = eqx.filter_jit(SMPLX._forward)


class _KeyChecker:
    """Fetches keys of a model file with errors that name the file, the key and the expected shape."""

    def __init__(self, data, source):
        self.data = data
        self.source = source

    def __call__(self, key, shape, kind="float"):
        expected = (
            "("
            + ", ".join("N" if s is None else str(s) for s in shape)
            + ("," if len(shape) == 1 else "")
            + ")"
        )
        if key not in self.data:
            raise ModelFileError(
                f"{self.source}: missing key '{key}' (expected an array of shape {expected}). "
                f"Is this an SMPL-X .npz? {SMPLX_DOWNLOAD_HELP}"
            )
        value = self.data[key]
        if hasattr(value, "toarray"):  # scipy sparse (J_regressor in some converted files)
            value = value.toarray()
        value = np.asarray(value)
        if value.dtype == object:
            raise ModelFileError(
                f"{self.source}: key '{key}' holds Python objects, expected a numeric array "
                f"of shape {expected}; convert .pkl files with converters.smplx_pkl_to_npz"
            )
        ok = value.ndim == len(shape) and all(
            s is None or s == d for s, d in zip(shape, value.shape, strict=False)
        )
        if not ok:
            raise ModelFileError(f"{self.source}: key '{key}' has shape {value.shape}, expected {expected}")
        if kind == "int" and not np.issubdtype(value.dtype, np.integer):
            if not np.all(np.mod(value, 1) == 0):
                raise ModelFileError(f"{self.source}: key '{key}' must hold integers")
        if kind == "float" and not np.all(np.isfinite(value)):
            raise ModelFileError(f"{self.source}: key '{key}' holds NaN or infinite values")
        return value


def betas_for(model: SMPLX, betas) -> np.ndarray:
    """`betas` (any length, or None) as the model's (num_betas,) shape vector: cut, or padded with
    zeros (a missing shape coefficient is a zero one)."""
    out = np.zeros(model.num_betas, np.float32)
    if betas is not None:
        b = np.asarray(betas, np.float32).reshape(-1)[: model.num_betas]
        out[: b.size] = b
    return out


def hand_vertex_ids(model: SMPLX, side: str) -> np.ndarray:
    """Vertices of one hand ('left' or 'right'): those whose largest skinning weight is on the wrist or
    a finger joint of that side (the wrist joint drives the palm)."""
    if side not in HAND_JOINTS:
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    owner = np.argmax(np.asarray(model.lbs_weights), axis=1)
    return np.nonzero(np.isin(owner, HAND_JOINTS[side]))[0].astype(np.int32)


def foot_vertex_ids(model: SMPLX, side: str | None = None) -> np.ndarray:
    """Vertices of the feet (both, or one side): largest skinning weight on an ankle or foot (toes) joint."""
    sides = ("left", "right") if side is None else (side,)
    if any(s not in FOOT_JOINTS for s in sides):
        raise ValueError(f"side must be 'left', 'right' or None, got {side!r}")
    owner = np.argmax(np.asarray(model.lbs_weights), axis=1)
    joints = [j for s in sides for j in FOOT_JOINTS[s]]
    return np.nonzero(np.isin(owner, joints))[0].astype(np.int32)
