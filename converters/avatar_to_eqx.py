"""Convert a trained Animatable Gaussians avatar (lizhe00/AnimatableGaussians) to one file that
`zerohsi_jax.avatar.load_avatar` reads without Torch.

    python -m converters.avatar_to_eqx --checkpoint results/.../net.pt \\
        --template-dir DATA_DIR --smplx-model SMPLX_NEUTRAL.npz -o avatar.eqx

Reads the checkpoint's `avatar_net` state dict (Torch, CPU), checks every key and shape against
the port (the network sizes are inferred from the shapes; the official ones are 512 -> 1024),
and the template files the official code loads at start-up from DATA_DIR/smpl_pos_map/:
`cano_smpl_pos_map.exr` and `cano_smpl_nml_map.exr` (S x 2S, front | back), `init_pts_lbs.npy`
(skinning weights of the map's body pixels) and DATA_DIR/smpl_params.npz (betas). The canonical
Gaussians are rebuilt as the official GaussianModel.create_from_pcd does (opacity 0.1, scale
from the mean squared distance to the 3 nearest points, identity rotation). The SMPL-X model
file gives the avatar's rest joints for its betas and the kinematic tree; only those (55 x 3
numbers) go into the output, not the model.

EXR files are read with OpenCV when it has OpenEXR support (OPENCV_IO_ENABLE_OPENEXR=1 is set
before importing it), else with the `OpenEXR` package (`pip install openexr`); `.npy` files
of the same stem are accepted instead.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np

POS_MAP = "cano_smpl_pos_map.exr"
NML_MAP = "cano_smpl_nml_map.exr"
LBS_FILE = "init_pts_lbs.npy"
PARAMS_FILE = "smpl_params.npz"
NETS = ("position_net", "other_net", "color_net")


class ConversionError(ValueError):
    pass


# ----------------------------------------------------------------------------- EXR
def read_exr(path) -> np.ndarray:
    """An EXR image as `cv2.imread(path, IMREAD_UNCHANGED)` returns it: (H, W, C) float32 with
    the channels in OpenCV's order (B, G, R for a 3-channel file)."""
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path).astype(np.float32)
    os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
    try:
        import cv2

        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is not None:
            return np.asarray(img, np.float32)
    except Exception:  # noqa: BLE001 - fall back to the OpenEXR package
        pass
    try:
        import OpenEXR
    except ImportError:
        raise ConversionError(
            f"cannot read {path}: this OpenCV has no OpenEXR support and the OpenEXR package is missing "
            "(pip install openexr), or convert the map to .npy with the same stem"
        ) from None
    with OpenEXR.File(str(path), separate_channels=True) as f:
        channels = {name: np.asarray(ch.pixels, np.float32) for name, ch in f.channels().items()}
    order = [c for c in ("B", "G", "R") if c in channels] + sorted(c for c in channels if c not in "BGR")
    return np.stack([channels[c] for c in order], axis=-1)


def write_exr(path, image: np.ndarray) -> None:
    """Write (H, W, 3) float32 the way `cv2.imwrite` does (channel 0 -> 'B', 1 -> 'G', 2 -> 'R')."""
    import OpenEXR

    image = np.ascontiguousarray(image, np.float32)
    channels = {name: np.ascontiguousarray(image[..., i]) for i, name in enumerate(("B", "G", "R"))}
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, channels) as f:
        f.write(str(path))


# ----------------------------------------------------------------------------- checkpoint
def load_checkpoint(path) -> dict[str, np.ndarray]:
    """The `avatar_net` state dict of an official checkpoint as float32 numpy arrays."""
    try:
        import torch
    except ImportError:
        raise ConversionError("reading the checkpoint needs Torch: pip install -e '.[torch]'") from None

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint {path} does not exist (the official trainer writes .../net.pt)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("avatar_net", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ConversionError(f"{path} holds no 'avatar_net' state dict")
    out = {}
    for key, value in state.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        if not torch.is_tensor(value):
            raise ConversionError(f"{path}: state-dict entry {key!r} is not a tensor")
        out[key] = value.detach().cpu().to(torch.float32).numpy()
    return out


def infer_config(state: dict[str, np.ndarray]) -> dict:
    """Network sizes from the shapes in an AvatarNet state dict. Falls back to the official
    sizes wherever a key is missing (the shape check then names it)."""
    import jax

    from zerohsi_jax.avatar.statedict import expected_shapes
    from zerohsi_jax.avatar.styleunet import DualStyleUNet, StyleUNetConfig

    official = StyleUNetConfig()
    nets = {}
    for name in NETS:
        pre = f"{name}."
        default = {"out_ch": 8 if name == "other_net" else 3}
        try:
            style_dim = state[pre + "style.1.weight"].shape[0]
            n_mlp = sum(1 for k in state if k.startswith(pre + "style.") and k.endswith(".weight"))
            out_ch = state[pre + "to_rgbs1.0.conv.weight"].shape[1] // 4
            inp_ch = state[pre + "conv_in.1.weight"].shape[1]
            blocks = sum(1 for k in state if k.startswith(pre + "to_rgbs1.") and k.endswith(".conv.weight"))
            levels = sum(
                1 for k in state if k.startswith(pre + "from_rgbs.") and k.endswith(".conv.0.weight")
            )
        except KeyError:
            nets[name] = {**official.__dict__, **default}
            continue
        mid = int(math.log2(official.middle_size))
        base = dict(
            inp_size=2 ** (levels + mid + 1), inp_ch=inp_ch, out_ch=out_ch, out_size=2 ** (mid + blocks + 1),
            style_dim=style_dim, n_mlp=n_mlp,
        )  # fmt: skip
        observed = sorted(
            {int(v.shape[0]) for k, v in state.items() if k.startswith(pre) and k.endswith("activate.bias")}
        )
        # The channel widths: the (multiplier, cap) whose layout matches the most keys, so that a
        # damaged checkpoint is reported key by key rather than as a different network.
        chosen, best = None, -1
        for cm in (2, 1, 4):
            for cmax in [512] + observed:
                try:
                    cfg = StyleUNetConfig(**base, channel_multiplier=cm, channel_max=cmax)
                except ValueError:
                    continue
                net = jax.eval_shape(lambda cfg=cfg: DualStyleUNet(cfg, key=jax.random.key(0)))
                shapes = expected_shapes(net, pre)
                score = sum(1 for k, s in shapes.items() if k in state and tuple(state[k].shape) == s)
                if score > best:
                    chosen, best = cfg, score
                if score == len(shapes):
                    break
            if best == len(shapes):
                break
        nets[name] = (chosen or StyleUNetConfig(**base)).__dict__
    viewdir = None
    if "viewdir_net.0.weight" in state:
        viewdir = {
            "hidden": int(state["viewdir_net.0.weight"].shape[0]),
            "out": int(state["viewdir_net.2.weight"].shape[0]),
        }
    return {"nets": nets, "viewdir": viewdir}


# ----------------------------------------------------------------------------- template
def find_file(template_dir: Path, name: str) -> Path:
    stem = Path(name).stem
    for folder in (template_dir / "smpl_pos_map", template_dir, template_dir.parent):
        for candidate in (folder / name, folder / f"{stem}.npy"):
            if candidate.is_file():
                return candidate
    raise ConversionError(
        f"template file {name} not found in {template_dir} or {template_dir / 'smpl_pos_map'}"
    )


def knn_mean_sq_dist(points: np.ndarray, k: int = 3) -> np.ndarray:
    try:
        from scipy.spatial import cKDTree

        d, _ = cKDTree(points).query(points, k=k + 1)
        return np.maximum(np.mean(d[:, 1:] ** 2, axis=1), 1e-7)
    except ImportError:
        from zerohsi_jax.avatar.builtin import knn_mean_sq_dist as brute

        return np.maximum(brute(points, k), 1e-7)


def build_template(template_dir, smplx_model, map_size: int):
    from zerohsi_jax.avatar.builtin import load_model_arrays
    from zerohsi_jax.avatar.model import OFFICIAL_OPACITY, make_template

    template_dir = Path(template_dir)
    pos_map = read_exr(find_file(template_dir, POS_MAP))[..., :3]
    nml_map = read_exr(find_file(template_dir, NML_MAP))[..., :3]
    if pos_map.shape != (map_size, 2 * map_size, 3):
        raise ConversionError(
            f"{POS_MAP} has shape {pos_map.shape}, but the networks output {map_size} px maps: "
            f"expected ({map_size}, {2 * map_size}, 3)"
        )
    if nml_map.shape != pos_map.shape:
        raise ConversionError(f"{NML_MAP} has shape {nml_map.shape}, expected {pos_map.shape}")
    mask = np.linalg.norm(pos_map, axis=-1) > 0.0
    rows, cols = np.nonzero(mask)  # row-major, the order of `map[mask]` in the official code
    points = pos_map[rows, cols].astype(np.float64)
    normals = nml_map[rows, cols].astype(np.float64)
    weights = np.load(find_file(template_dir, LBS_FILE)).astype(np.float64)
    if weights.shape != (len(points), 55):
        raise ConversionError(
            f"{LBS_FILE} has shape {weights.shape}, expected ({len(points)}, 55): "
            f"one row per body pixel of {POS_MAP}"
        )
    with np.load(find_file(template_dir, PARAMS_FILE)) as params:
        betas = np.asarray(params["betas"], np.float64).reshape(-1)
    smplx_model = Path(smplx_model)
    if smplx_model.suffix == ".pkl":
        raise ConversionError(
            f"{smplx_model}: convert the .pkl model once with `python -m converters.smplx_pkl_to_npz` "
            "and pass the .npz"
        )
    if not smplx_model.is_file():
        raise ConversionError(f"SMPL-X model file {smplx_model} does not exist (pass SMPLX_NEUTRAL.npz)")
    model = load_model_arrays(smplx_model)
    dirs = np.asarray(model["shapedirs"], np.float64)[:, :, : len(betas)]
    v_shaped = np.asarray(model["v_template"], np.float64) + dirs @ betas[: dirs.shape[-1]]
    joints = np.asarray(model["J_regressor"], np.float64) @ v_shaped
    parents = (-1,) + tuple(int(p) for p in np.asarray(model["kintree_table"][0]).astype(np.int64)[1:])

    n = len(points)
    log_scale = np.log(np.sqrt(knn_mean_sq_dist(points)))
    quats = np.zeros((n, 4))
    quats[:, 0] = 1.0
    return make_template(
        map_size=map_size,
        map_points=points, map_normals=normals, map_weights=weights, map_rows=rows, map_cols=cols,
        gaussian_means=points, gaussian_weights=weights, gaussian_rows=rows, gaussian_cols=cols,
        base_log_scales=np.repeat(log_scale[:, None], 3, axis=1),
        base_opacity_logits=np.full(n, math.log(OFFICIAL_OPACITY / (1 - OFFICIAL_OPACITY))),
        base_quats=quats, base_colors=np.zeros((n, 3)),
        joints_rest=joints, parents=parents, betas=betas,
    )  # fmt: skip


# ----------------------------------------------------------------------------- main
def convert(checkpoint, template_dir, smplx_model, output, *, weight_viewdirs: float = 1.0) -> Path:
    from zerohsi_jax.avatar.io import check_network_state, template_arrays, write_avatar_file

    state = load_checkpoint(checkpoint)
    config = infer_config(state)
    check_network_state(config, state)
    sizes = {config["nets"][n]["out_size"] for n in NETS}
    if len(sizes) != 1:
        raise ConversionError(f"the three networks output different map sizes: {sorted(sizes)}")
    map_size = sizes.pop()
    template = build_template(template_dir, smplx_model, map_size)
    config.update(
        color_order="bgr",
        weight_viewdirs=float(weight_viewdirs),
        map_size=map_size,
        parents=list(template.parents),
        source={"checkpoint": str(checkpoint), "template_dir": str(template_dir)},
    )
    return write_avatar_file(output, config, state, template_arrays(template))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m converters.avatar_to_eqx", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--checkpoint", required=True, help="official net.pt (a dict with 'avatar_net')")
    parser.add_argument(
        "--template-dir", required=True, help="the avatar's data dir (with smpl_pos_map/ and smpl_params.npz)"
    )
    parser.add_argument(
        "--smplx-model", required=True, help="SMPL-X model .npz (SMPLX_NEUTRAL.npz) the avatar was made with"
    )
    parser.add_argument("-o", "--output", required=True, help="output avatar file")
    parser.add_argument(
        "--weight-viewdirs", type=float, default=1.0, help="the training config's weight_viewdirs (default 1)"
    )
    args = parser.parse_args(argv)
    try:
        path = convert(
            args.checkpoint,
            args.template_dir,
            args.smplx_model,
            args.output,
            weight_viewdirs=args.weight_viewdirs,
        )
    except (ConversionError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
