"""The Equinox avatar networks and converter against PyTorch modules built to the official
Animatable Gaussians layout (tests/torch_reference), with the same random weights."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zerohsi_jax.avatar import StyleUNetConfig
from zerohsi_jax.avatar.layers import haar_kernels, make_kernel, upfirdn2d
from zerohsi_jax.avatar.statedict import StateDictError, expected_shapes, load_state_dict
from zerohsi_jax.avatar.styleunet import DualStyleUNet

pytestmark = pytest.mark.torch

SMALL = dict(inp_size=64, out_size=128, style_dim=32, channel_max=16)


def randomize_(module, seed):
    """Official init leaves biases and noise gains at zero; make every parameter matter."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or name.endswith("noise.weight"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))


def nhwc(t):
    return jnp.asarray(t.detach().numpy()[0].transpose(1, 2, 0))


def test_upfirdn2d_matches_reference():
    import torch
    from torch_reference.dual_styleunet import upfirdn

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 5, 17, 12)).astype(np.float32)
    general = rng.standard_normal((3, 4)).astype(np.float32)  # not rank one: the convolution path
    cases = [
        (make_kernel(), 1, 2, (1, 1)),
        (make_kernel() * 4, 2, 1, (2, 1)),
        (haar_kernels()[1], 1, 2, (0, 0)),
        (-haar_kernels()[2], 2, 1, (1, 0, 1, 0)),
        (general, 2, 3, (2, -1, 0, 3)),
        (general, 1, 1, (-1, 2)),
    ]
    for kernel, up, down, pad in cases:
        want = upfirdn(torch.from_numpy(x), torch.from_numpy(np.asarray(kernel)), up, down, pad).numpy()[0]
        got = np.asarray(upfirdn2d(jnp.asarray(x[0].transpose(1, 2, 0)), kernel, up, down, pad)).transpose(
            2, 0, 1
        )
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"up={up} down={down} pad={pad}")


def test_dual_styleunet_matches_torch():
    import torch
    from torch_reference.dual_styleunet import DualStyleUNet as TorchUNet

    torch.manual_seed(0)
    # out_size 256 has five decoder blocks, so the view features enter (at the 64 px block).
    cfg = dict(inp_size=128, out_size=256, style_dim=32, channel_max=16)
    ref = TorchUNet(out_ch=8, **cfg)
    randomize_(ref, 1)
    net = load_state_dict(
        jax.eval_shape(lambda: DualStyleUNet(StyleUNetConfig(out_ch=8, **cfg), key=jax.random.key(0))),
        {k: v.numpy() for k, v in ref.state_dict().items()},
    )
    cond = torch.randn(1, 3, 128, 128)
    view = torch.randn(1, 16, 32, 32)
    with torch.no_grad():
        want = ref(torch.ones(1, 32) / math.sqrt(32), cond, view, 0.5 * view).numpy()[0]
    front, back = eqx.filter_jit(lambda n, c, v: n(c, v, 0.5 * v))(net, nhwc(cond), nhwc(view))
    got = np.concatenate([front, back], -1).transpose(2, 0, 1)
    assert got.shape == (16, 256, 256)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got / scale, want / scale, atol=2e-5)


def test_full_size_layout_matches_torch_layout():
    """Every official key and shape at 512 -> 1024, built without memory on both sides."""
    import torch
    from torch_reference.dual_styleunet import AvatarNets

    with torch.device("meta"):
        ref = AvatarNets()
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    from zerohsi_jax.avatar.io import avatar_skeleton

    names = ("position_net", "other_net", "color_net")
    config = {"nets": {n: StyleUNetConfig(out_ch=8 if n == "other_net" else 3).__dict__ for n in names},
              "viewdir": {"hidden": 64, "out": 128}}  # fmt: skip
    nets, viewdir = avatar_skeleton(config)
    got = {}
    for name, net in nets.items():
        got.update(expected_shapes(net, f"{name}."))
    got.update(expected_shapes(viewdir, "viewdir_net."))
    assert got == want
    n_params = sum(math.prod(s) for k, s in want.items() if k in dict(ref.named_parameters()))
    assert n_params == 223_648_936


def test_converter_roundtrip(tmp_path):
    """A checkpoint in the official key layout + template files -> avatar file -> the same
    Gaussians as the official AvatarNet procedure computes in Torch."""
    import torch
    from torch_reference.avatar import official_gaussians
    from torch_reference.dual_styleunet import AvatarNets

    from converters.avatar_to_eqx import main, write_exr
    from zerohsi_jax.avatar import load_avatar
    from zerohsi_jax.avatar.builtin import canonical_body, canonical_maps, load_model_arrays
    from zerohsi_jax.avatar.io import AvatarFileError
    from zerohsi_jax.geometry import rigid
    from zerohsi_jax.synthetic import synthetic_smplx_path

    torch.manual_seed(0)
    nets = AvatarNets(**SMALL, viewdir_hidden=8)
    randomize_(nets, 2)
    ckpt = tmp_path / "net.pt"
    torch.save({"epoch_idx": 3, "iter_idx": 1000, "avatar_net": nets.state_dict()}, ckpt)

    # Template files as gen_data/gen_pos_maps.py lays them out, from the synthetic body.
    smplx_path = synthetic_smplx_path()
    verts, faces, weights, _, _ = canonical_body(load_model_arrays(smplx_path), np.zeros(10))
    pts, nml, w, rows, cols, _, _ = canonical_maps(verts, faces, weights, 128)
    pos_map = np.zeros((128, 256, 3), np.float32)
    nml_map = np.zeros((128, 256, 3), np.float32)
    pos_map[rows, cols], nml_map[rows, cols] = pts, nml
    order = np.lexsort((cols, rows))  # the official point order is row-major over the map
    data = tmp_path / "data"
    (data / "smpl_pos_map").mkdir(parents=True)
    try:  # EXR as the official files; without the OpenEXR package, the .npy the converter also reads
        write_exr(data / "smpl_pos_map" / "cano_smpl_pos_map.exr", pos_map)
        write_exr(data / "smpl_pos_map" / "cano_smpl_nml_map.exr", nml_map)
    except ImportError:
        np.save(data / "smpl_pos_map" / "cano_smpl_pos_map.npy", pos_map)
        np.save(data / "smpl_pos_map" / "cano_smpl_nml_map.npy", nml_map)
    np.save(data / "smpl_pos_map" / "init_pts_lbs.npy", w[order].astype(np.float32))
    np.savez(data / "smpl_params.npz", betas=np.zeros((1, 10), np.float32))

    out = tmp_path / "avatar.eqx"
    args = [
        "--checkpoint",
        str(ckpt),
        "--template-dir",
        str(data),
        "--smplx-model",
        str(smplx_path),
        "-o",
        str(out),
    ]
    assert main(args) == 0
    avatar = load_avatar(out)
    assert avatar.color_order == "bgr" and avatar.num_gaussians == len(pts)

    rng = np.random.default_rng(1)
    go, bp, tr = (
        jnp.array([0.2, -0.4, 0.1]),
        jnp.asarray(rng.normal(0, 0.3, 63), jnp.float32),
        jnp.array([0.3, 0.0, -0.5]),
    )
    cam = jnp.array([0.5, 0.3, 2.5])
    gaussians, aux = eqx.filter_jit(lambda a, *x: a(*x, return_aux=True))(avatar, go, bp, tr, cam)
    _, _, cano2live, rot, trans = avatar.skeleton(go, bp, tr)
    with_root = rigid(rot, trans) @ cano2live
    t = lambda x: torch.from_numpy(np.array(x, np.float32))  # noqa: E731
    ref = official_gaussians(nets, t(pos_map), t(nml_map), t(w[order]), t(cano2live), t(with_root), t(cam))

    np.testing.assert_allclose(aux.pose_map, ref["pose_map"].numpy().transpose(1, 2, 0), atol=1e-5)
    np.testing.assert_allclose(gaussians.means, ref["positions"].numpy(), atol=1e-4)
    np.testing.assert_allclose(jax.nn.sigmoid(gaussians.opacity_logits), ref["opacity"].numpy(), atol=1e-5)
    np.testing.assert_allclose(np.exp(gaussians.log_scales), ref["scales"].numpy(), rtol=1e-3, atol=1e-7)
    q_ref = ref["rotations"].numpy()
    q_ref /= np.linalg.norm(q_ref, axis=-1, keepdims=True)
    q = np.asarray(gaussians.quats) / np.linalg.norm(gaussians.quats, axis=-1, keepdims=True)
    np.testing.assert_allclose(np.abs(np.sum(q * q_ref, -1)), 1.0, atol=1e-4)
    from zerohsi_jax.splat.gaussians import SH_C0

    colors = np.asarray(SH_C0 * gaussians.sh[:, 0] + 0.5)
    np.testing.assert_allclose(colors, ref["colors"].numpy()[:, ::-1], atol=2e-4)  # BGR -> RGB

    # A mismatched checkpoint names the key and both shapes; a missing one names the key.
    state = nets.state_dict()
    state["color_net.to_rgbs1.0.bias"] = torch.zeros(1, 5, 1, 1)
    del state["other_net.style.2.bias"]
    torch.save({"avatar_net": state}, ckpt)
    from converters.avatar_to_eqx import convert

    with pytest.raises(AvatarFileError) as err:
        convert(ckpt, data, smplx_path, tmp_path / "bad.eqx")
    msg = str(err.value)
    assert "color_net.to_rgbs1.0.bias" in msg and "(1, 5, 1, 1)" in msg and "(1, 12, 1, 1)" in msg
    assert "other_net.style.2.bias" in msg and "missing" in msg
    with pytest.raises(StateDictError):
        load_state_dict(
            avatar.color_net,
            {k[len("color_net.") :]: v.numpy() for k, v in state.items() if k.startswith("color_net.")},
        )
