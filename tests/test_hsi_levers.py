"""The HSI fit's speed levers change how an iteration is computed, not what it optimises:
amortised avatar networks (`network_every`), bfloat16 networks (`network_dtype`) and the static
scene bound once per frame (`bind_scene`)."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zerohsi_jax.avatar.builtin import with_pose_dependence
from zerohsi_jax.avatar.model import NETWORKS, AvatarMaps
from zerohsi_jax.reconstruct import HSIFitConfig, ReconstructConfig
from zerohsi_jax.reconstruct.config import CameraTrackingConfig, RefineConfig
from zerohsi_jax.reconstruct.hsi_fit import (
    ALL_NETWORKS,
    COLOR_NET_ONLY,
    HELD_OUTPUTS,
    fit_frame,
    network_step_kind,
    reachable_step_kinds,
)


def _kinds(iterations, **cfg):
    cfg = HSIFitConfig(iterations=iterations, **cfg)
    return [int(network_step_kind(jnp.asarray(i), cfg)) for i in range(iterations)]


def test_network_schedule():
    """Every iteration at 1 (the paper); every k-th with the colour net alone on its own steps
    between; the first step only at 0."""
    assert _kinds(12, network_every=1) == [ALL_NETWORKS] * 12
    assert _kinds(12, network_every=5, color_every=5) == [ALL_NETWORKS if i % 5 == 0 else HELD_OUTPUTS
                                                          for i in range(12)]
    k25 = _kinds(30, network_every=25, color_every=5)
    assert [i for i, k in enumerate(k25) if k == ALL_NETWORKS] == [0, 25]
    assert [i for i, k in enumerate(k25) if k == COLOR_NET_ONLY] == [5, 10, 15, 20]
    once = _kinds(12, network_every=0, color_every=0)
    assert once == [ALL_NETWORKS] + [HELD_OUTPUTS] * 11


@pytest.mark.parametrize("every, color_every, iterations", [(1, 5, 12), (0, 5, 12), (0, 0, 12), (5, 5, 12),
                                                            (5, 25, 30), (25, 5, 30), (0, 5, 1), (3, 5, 10)])
def test_only_the_reached_kinds_are_compiled(every, color_every, iterations):
    """`fit_frame` compiles a branch (a differentiated avatar) per kind the schedule reaches: the
    host-side schedule names exactly the kinds the traced one gives."""
    cfg = HSIFitConfig(iterations=iterations, network_every=every, color_every=color_every)
    assert reachable_step_kinds(cfg) == sorted(set(_kinds(iterations, network_every=every,
                                                          color_every=color_every)))


class _PoseFreeNetworks(eqx.Module):
    """An avatar whose networks give the outputs of one fixed pose whatever the pose: holding them
    then changes nothing, so an amortised fit must equal the paper's exactly."""

    avatar: eqx.Module

    def network_maps(self, global_orient, body_pose, transl, camera_position, *, nets=NETWORKS, dtype="float32"):
        a = self.avatar
        full = a.network_maps(jnp.zeros(3), jnp.zeros(63), jnp.zeros(3), jnp.zeros(3), dtype=dtype)
        pick = lambda name, v: v if name in nets else None  # noqa: E731
        return AvatarMaps(pick("position", full.offsets), pick("other", full.others), pick("color", full.colors))

    def pose_gaussians(self, maps, global_orient, body_pose, transl):
        return self.avatar.pose_gaussians(maps, global_orient, body_pose, transl)

    def __call__(self, global_orient, body_pose, transl, camera_position, *, dtype="float32"):
        maps = self.network_maps(global_orient, body_pose, transl, camera_position, dtype=dtype)
        return self.pose_gaussians(maps, global_orient, body_pose, transl)


def _fit(demo, avatar, cfg, t=1):
    color, rest = eqx.partition(avatar, jax.tree.map(lambda _: False, avatar))
    truth = demo.truth
    human0 = jax.tree.map(lambda x: jnp.asarray(x[t - 1]), truth.human)
    obj0 = jax.tree.map(lambda x: jnp.asarray(x[t - 1]), truth.object_poses)
    camera = demo.inputs.camera.with_viewmat(jnp.asarray(truth.viewmats[t]))
    run = eqx.filter_jit(lambda rest, color: fit_frame(
        rest, color, human0, obj0, demo.inputs.object, demo.inputs.scene, camera, jnp.asarray(demo.frames[t]),
        jnp.asarray(demo.human_masks[t]), jnp.asarray(demo.object_masks[t]), jnp.asarray(1.0), cfg, demo.raster,
        jnp.zeros(3)))
    return run(rest, color)


@pytest.mark.parametrize("every", [5, 0])
@pytest.mark.slow(seconds=80)
def test_held_network_outputs_change_nothing_when_the_networks_ignore_the_pose(tiny_demo, every):
    """With pose-independent network outputs, a fit that holds them between refreshes takes the
    same steps as the paper's (the pose gradient through the skinning is the whole gradient)."""
    avatar = _PoseFreeNetworks(tiny_demo.inputs.avatar)
    base = HSIFitConfig(iterations=8, root_only_iterations=2, color_every=0)
    paper = _fit(tiny_demo, avatar, base)
    held = _fit(tiny_demo, avatar, dataclasses.replace(base, network_every=every))
    np.testing.assert_allclose(held.losses, paper.losses, rtol=1e-5, atol=1e-7)
    for name in ("transl", "global_orient", "body_pose"):
        np.testing.assert_allclose(getattr(held.human, name), getattr(paper.human, name), atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def pose_dependent_avatar(tiny_demo):
    """The tiny demo's avatar with pose-dependent network outputs (the built-in one has none)."""
    return with_pose_dependence(tiny_demo.inputs.avatar, 0.3)


@pytest.mark.slow(seconds=140)
def test_amortised_fit_differs_and_stays_close(tiny_demo, pose_dependent_avatar):
    """With networks whose outputs follow the pose, holding them is an approximation: the poses
    differ from the paper's path (the branch really holds), yet the loss still falls."""
    base = HSIFitConfig(iterations=8, root_only_iterations=2)
    paper = _fit(tiny_demo, pose_dependent_avatar, base)
    held = _fit(tiny_demo, pose_dependent_avatar, dataclasses.replace(base, network_every=4))
    assert not np.allclose(held.human.body_pose, paper.human.body_pose, atol=1e-7)
    assert held.losses[-1] < held.losses[0]
    np.testing.assert_allclose(held.losses[0], paper.losses[0], rtol=1e-6)


@pytest.mark.slow(seconds=105)
def test_bound_scene_fit_equals_the_full_render_fit(tiny_demo):
    """Binding the scene once per frame gives the fit of the full render, up to round-off."""
    base = HSIFitConfig(iterations=6, root_only_iterations=2)
    full = _fit(tiny_demo, tiny_demo.inputs.avatar, base)
    bound = _fit(tiny_demo, tiny_demo.inputs.avatar, dataclasses.replace(base, bind_scene=True))
    # The same render at the same parameters: the first loss agrees to round-off. Later iterations
    # drift apart slightly: Adam normalises each parameter's step, so round-off in a tiny gradient
    # entry can change its step by up to the learning rate (measured: losses within 3.2e-4).
    np.testing.assert_allclose(bound.losses[0], full.losses[0], rtol=1e-5)
    np.testing.assert_allclose(bound.losses, full.losses, rtol=2e-3)
    for name in ("transl", "global_orient", "body_pose"):
        np.testing.assert_allclose(getattr(bound.human, name), getattr(full.human, name), atol=5e-3, err_msg=name)
    assert int(bound.raster_counts.overflow) == 0
    assert 0 < int(bound.raster_counts.dynamic_pairs) < int(full.raster_counts.num_pairs)
    assert int(full.raster_counts.dynamic_pairs) == 0


def test_bfloat16_networks_are_close_to_float32(pose_dependent_avatar):
    """bfloat16 weights and activations: float32 outputs within bfloat16's precision of the
    float32 networks'."""
    avatar = pose_dependent_avatar
    pose = (jnp.zeros(3), 0.2 * jnp.ones(63), jnp.zeros(3), jnp.asarray([0.0, 1.0, 3.0]))
    f32 = jax.jit(lambda a: a.network_maps(*pose))(avatar)
    bf16 = jax.jit(lambda a: a.network_maps(*pose, dtype="bfloat16"))(avatar)
    for name in ("offsets", "others", "colors"):
        a, b = getattr(f32, name), getattr(bf16, name)
        assert b.dtype == jnp.float32
        spread = float(jnp.std(a))
        assert spread > 0.01, name  # the outputs do depend on the networks
        rms = float(jnp.sqrt(jnp.mean((a - b) ** 2)))
        worst = float(jnp.max(jnp.abs(a - b)))
        print(f"{name}: output spread {spread:.4g}, bfloat16 error rms {rms:.3g}, max {worst:.3g}")
        # bfloat16 keeps 8 significant bits (0.4% per rounding); through a UNet's layers the
        # error grows to a few per cent of the outputs' spread.
        assert rms < 0.05 * spread, name


@pytest.mark.slow(seconds=220)
def test_levers_run_in_the_pipeline(tiny_demo):
    """All three levers through `reconstruct`: finite, and the bound render's moving-pair buffer
    (`RasterConfig.dynamic_pair_capacity`) grows, alone, when it is too small."""
    from zerohsi_jax.reconstruct import Observations, reconstruct
    from zerohsi_jax.reconstruct.pipeline import measure_moving_pairs

    d = tiny_demo
    # No camera tracking: the levers are the HSI fit's, and each stage left out is a compilation less.
    cfg = ReconstructConfig(camera=CameraTrackingConfig(enabled=False),
                            hsi=HSIFitConfig(iterations=4, root_only_iterations=1, network_every=2,
                                             network_dtype="bfloat16", bind_scene=True),
                            refine=RefineConfig(enabled=False))
    obs = Observations(jnp.asarray(d.frames)[None], jnp.asarray(d.human_masks)[None],
                       jnp.asarray(d.object_masks)[None])
    assert measure_moving_pairs(d.inputs, d.initial, d.raster) > 1024
    small = d.raster.with_capacity(dynamic_pair_capacity=1024)  # too small for the first frame's render
    said = []
    out = reconstruct(d.inputs, obs, d.initial, d.vposer, cfg, raster=small, progress=False, log=said.append)
    assert np.all(np.isfinite(out.human_stage2.body_pose))
    grown = out.raster
    assert grown.dynamic_pair_capacity > 1024
    # Only the buffer that was short grew; the line says so, naming the capacities the frame was redone with.
    assert (grown.tile_capacity, grown.pair_capacity) == (small.tile_capacity, small.pair_capacity)
    assert any("dynamic_pair_capacity=1024; redone with" in s and s.endswith(grown.capacity_text()) for s in said), said
