"""The synthetic benchmark's scoring on the tiny demo problem (the full suite is an experiment:
`zerohsi-jax bench-suite`)."""

import jax.numpy as jnp
import numpy as np
import pytest

from zerohsi_jax.benchsuite import SUITES, VARIANTS, format_tables, instance_metrics
from zerohsi_jax.reconstruct import (
    CameraTrackingConfig,
    HSIFitConfig,
    HumanPose,
    Observations,
    ReconstructConfig,
    Reconstruction,
    RefineConfig,
    reconstruct,
)
from zerohsi_jax.synthetic.instances import noisy_estimates

CFG = ReconstructConfig(
    camera=CameraTrackingConfig(iterations=3),
    hsi=HSIFitConfig(iterations=4, root_only_iterations=1),
    refine=RefineConfig(iterations=5),
)


@pytest.mark.slow(seconds=170)
def test_instance_metrics_and_tables(tiny_demo, tmp_path):
    demo = tiny_demo
    est = np.stack([noisy_estimates(np.asarray(demo.truth.human.body_pose), 0.05, 10 + s) for s in (0, 1)])
    tile = lambda a: jnp.asarray(np.broadcast_to(a, (2,) + a.shape))  # noqa: E731
    obs = Observations(tile(demo.frames), tile(demo.human_masks), tile(demo.object_masks), jnp.asarray(est))
    result = reconstruct(demo.inputs, obs, demo.initial, demo.vposer, CFG, raster=demo.raster, progress=False)
    row = instance_metrics(demo.inputs, result, [demo.truth, demo.truth], demo.room, True, tmp_path)
    expected = {"penetration_percent", "penetration_mean_cm", "penetration_max_cm", "foot_sliding_cm",
                "diversity_m", "contact_percent", "object_penetration_cm", "mpjpe_mm", "root_translation_mm",
                "camera_rotation_deg", "object_translation_mm"}
    assert set(row) == expected
    assert all(np.isfinite(v) for v in row.values())
    assert 0.0 <= row["penetration_percent"] <= 100.0 and 0.0 <= row["contact_percent"] <= 100.0
    # The two seeds started from different estimates, so their reconstructions differ.
    assert row["diversity_m"] > 0.0

    # Scored as if it were a reconstruction, the ground truth itself is perfect where it must be:
    # no error, no scene penetration (the feet rest on the floor), identical seeds, the hand at
    # the box once it is lifted.
    truth = demo.truth
    both = lambda x: np.stack([np.asarray(x)] * 2)  # noqa: E731
    human = HumanPose(both(truth.human.transl), both(truth.human.global_orient), both(truth.human.body_pose))
    perfect = Reconstruction(viewmats=both(truth.viewmats), human_stage2=human, human=human,
                             object_poses=both(truth.object_poses.matrix()), timings={})
    ideal = instance_metrics(demo.inputs, perfect, [truth, truth], demo.room, True, tmp_path)
    assert ideal["mpjpe_mm"] == 0.0 and ideal["object_translation_mm"] == 0.0 and ideal["diversity_m"] == 0.0
    assert ideal["penetration_percent"] < 0.1
    assert ideal["contact_percent"] > 0.0
    # Scored as a static instance, there is no moving object: no object error or contact columns.
    static = instance_metrics(demo.inputs, perfect, [truth, truth], demo.room, False, tmp_path)
    assert set(static) == expected - {"contact_percent", "object_penetration_cm", "object_translation_mm"}
    table = format_tables([{"instance": "a", "setting": "dynamic", "method": m, "seconds": 1.0, **row}
                           for m in VARIANTS], "small", 2, 3, 40, "quick")
    assert "Table 2 layout" in table and "w/o camera tracking" in table and "| ZeroHSI (ours) |" in table
    assert "before refinement" in table
    assert set(SUITES) == {"small", "full"}


def test_scores_return_known_perturbations(tiny_demo, tmp_path):
    """The truth moved by known amounts scores those amounts: 0.1 m of root translation is 100 mm of
    root and joint error, one seed 0.1 m away from the other is a diversity of 0.1 m, a camera turned
    by 5 degrees is 5 degrees, the object 0.1 m off is 100 mm. The paper's protocol scores the
    stage-2 poses; 'refined' scores the refined ones."""
    from zerohsi_jax.geometry import axis_angle_to_matrix

    demo = tiny_demo
    truth = demo.truth
    shift = np.array([0.1, 0.0, 0.0], np.float32)
    pose = lambda d: HumanPose(np.stack([np.asarray(truth.human.transl) + d, np.asarray(truth.human.transl)]),  # noqa: E731
                               np.stack([np.asarray(truth.human.global_orient)] * 2),
                               np.stack([np.asarray(truth.human.body_pose)] * 2))
    turn = np.asarray(axis_angle_to_matrix(jnp.asarray([0.0, np.deg2rad(5.0), 0.0])))
    viewmats = np.asarray(truth.viewmats).copy()
    viewmats[:, :3, :3] = np.einsum("ij,tjk->tik", turn, viewmats[:, :3, :3])
    objects = np.asarray(truth.object_poses.matrix()).copy()
    objects[:, :3, 3] += shift
    result = Reconstruction(viewmats=np.stack([viewmats, np.asarray(truth.viewmats)]), human_stage2=pose(shift),
                            human=pose(0.0 * shift), object_poses=np.stack([objects, objects]), timings={})
    row = instance_metrics(demo.inputs, result, [truth, truth], demo.room, True, tmp_path)
    assert row["root_translation_mm"] == pytest.approx(50.0, abs=1e-3)  # seed 0 off by 100 mm, seed 1 exact
    assert row["mpjpe_mm"] == pytest.approx(50.0, abs=1e-2)
    assert row["diversity_m"] == pytest.approx(0.1, abs=1e-5)
    assert row["camera_rotation_deg"] == pytest.approx(2.5, abs=1e-2)
    assert row["object_translation_mm"] == pytest.approx(100.0, abs=1e-3)
    refined = instance_metrics(demo.inputs, result, [truth, truth], demo.room, True, tmp_path, poses="refined")
    assert refined["root_translation_mm"] == 0.0 and refined["mpjpe_mm"] == 0.0 and refined["diversity_m"] == 0.0
