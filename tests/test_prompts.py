"""SAM2 prompt proposals: farthest-point sampling on masks, and occlusion-aware prompts from a render."""

import itertools

import cv2
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zerohsi_jax.segment import farthest_point_prompts, prompts_from_render, visible_group_masks
from zerohsi_jax.splat import Camera, Gaussians, RasterConfig, render


def pixel_of(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the pixels holding (x, y) pixel-centre coordinates."""
    return np.floor(points[:, 1]).astype(int), np.floor(points[:, 0]).astype(int)


def min_pairwise_distance(points: np.ndarray) -> float:
    return min(np.linalg.norm(a - b) for a, b in itertools.combinations(points, 2))


def test_points_inside_spread_out_and_deterministic():
    mask = np.zeros((60, 80), bool)
    mask[10:50, 20:60] = True  # 40x40 square
    points = farthest_point_prompts(mask, 5, erode_px=3)
    assert points.shape == (5, 2) and points.dtype == np.float32
    rows, cols = pixel_of(points)
    assert mask[rows, cols].all()
    # The first point is the deepest pixel: the square's centre (pixel centres at +0.5).
    assert np.linalg.norm(points[0] - [40.0, 30.0]) <= 1.0
    # Farthest-point sampling is within a factor 2 of the best spread; 5 points in a square of
    # side 34 (after erosion) can be at least 34 / sqrt(2) ~ 24 apart (the corners), so >= 12.
    assert min_pairwise_distance(points) >= 12.0
    # Then the corners: every further point is more than 3 px inside but near the boundary.
    depth = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[
        1:-1, 1:-1
    ]
    assert (depth[rows, cols] > 3.0).all()
    np.testing.assert_array_equal(points, farthest_point_prompts(mask, 5, erode_px=3))


def test_points_reach_every_part_of_a_split_mask():
    mask = np.zeros((40, 100), bool)
    mask[5:35, 5:35] = True
    mask[15:25, 80:95] = True  # small second part far away
    points = farthest_point_prompts(mask, 2, erode_px=2)
    rows, cols = pixel_of(points)
    assert mask[rows, cols].all()
    assert cols[0] < 40 and cols[1] >= 80  # the deep part first, then the far one


def test_small_masks_fall_back_and_empty_masks_fail():
    mask = np.zeros((10, 10), bool)
    mask[4, 3:6] = True  # 3 pixels: erosion would leave nothing, so the whole mask is used
    points = farthest_point_prompts(mask, 5, erode_px=3)
    assert points.shape == (3, 2)
    rows, cols = pixel_of(points)
    assert mask[rows, cols].all() and len({*cols}) == 3
    with pytest.raises(ValueError, match="empty"):
        farthest_point_prompts(np.zeros((4, 4), bool), 3)


def blob(key, center, half_extent, num, group, scale):
    means = jnp.asarray(center) + jax.random.uniform(key, (num, 3), minval=-1, maxval=1) * jnp.asarray(
        half_extent
    )
    return Gaussians(
        means=means,
        quats=jnp.tile(jnp.array([1.0, 0.0, 0.0, 0.0]), (num, 1)),
        log_scales=jnp.full((num, 3), jnp.log(scale)),
        opacity_logits=jnp.full((num,), 5.0),
        sh=jnp.zeros((num, 1, 3)),
        groups=jnp.full((num,), group, jnp.int32),
    )


@pytest.fixture(scope="module")
def occlusion_render():
    """A wide object (group 2) at depth 4 with a narrow human (group 1) standing in front of its
    left half at depth 2.5; also the object's footprint alone (the human made transparent)."""
    key_object, key_human = jax.random.split(jax.random.key(0))
    scene = Gaussians.concatenate(
        [
            blob(key_object, (0.5, 0.2, 4.0), (0.8, 0.4, 0.02), 400, 2, 0.06),
            blob(key_human, (0.0, 0.0, 2.5), (0.15, 0.6, 0.02), 200, 1, 0.04),
        ]
    )
    camera = Camera.look_at((0, 0, 0), (0, 0, 1), up=(0, -1, 0), fov_y_deg=40, width=96, height=64)
    config = RasterConfig(tile_capacity=512, pair_capacity=16384)
    draw = jax.jit(lambda g: render(g, camera, num_groups=3, config=config))
    both = draw(scene)
    transparent_human = eqx.tree_at(
        lambda g: g.opacity_logits, scene, jnp.where(scene.groups == 1, -30.0, 5.0)
    )
    object_alone = draw(transparent_human)
    assert int(both.overflow) == 0 and int(object_alone.overflow) == 0
    return np.asarray(both.group_masks), np.asarray(object_alone.group_masks)


def test_object_prompts_avoid_the_pixels_the_human_hides(occlusion_render):
    group_masks, object_alone = occlusion_render
    footprint = object_alone[..., 2] >= 0.5
    visible = visible_group_masks(group_masks, {"human": 1, "object": 2})
    hidden = footprint & ~visible["object"]
    # The setup is meaningful: the human hides a good part of the object, which stays visible elsewhere.
    assert hidden.sum() > 0.2 * footprint.sum() and visible["object"].sum() > 0.3 * footprint.sum()
    assert not (visible["human"] & visible["object"]).any()

    prompts = prompts_from_render(group_masks, human_group=1, object_group=2, num_points=6, num_negative=2)
    assert list(prompts) == ["human", "object"]
    for name, other in (("human", "object"), ("object", "human")):
        points, labels = prompts[name]
        assert points.shape == (8, 2) and labels.tolist() == [1] * 6 + [0] * 2
        rows, cols = pixel_of(points)
        assert visible[name][rows[labels == 1], cols[labels == 1]].all(), name
        assert visible[other][rows[labels == 0], cols[labels == 0]].all(), name
    object_rows, object_cols = pixel_of(prompts["object"][0][prompts["object"][1] == 1])
    assert not hidden[object_rows, object_cols].any()
    assert (group_masks[object_rows, object_cols, 1] < 0.5).all()


def test_invisible_object_is_an_error_naming_it(occlusion_render):
    group_masks, _ = occlusion_render
    hidden_everywhere = group_masks.copy()
    hidden_everywhere[..., 2] = 0.0
    with pytest.raises(ValueError, match=r"object \(group 2\) is visible on no pixel"):
        prompts_from_render(hidden_everywhere, human_group=1, object_group=2)
    only_human = prompts_from_render(group_masks, human_group=1)  # static scenes have no object
    assert list(only_human) == ["human"]
    with pytest.raises(ValueError, match="group id 5"):
        prompts_from_render(group_masks, human_group=5)
