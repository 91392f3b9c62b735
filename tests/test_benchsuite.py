"""The synthetic benchmark's scoring on the tiny demo problem (the full suite is an experiment:
`zerohsi-jax bench-suite`)."""

import jax.numpy as jnp
import numpy as np

from zerohsi_jax.benchsuite import SUITES, VARIANTS, format_tables, instance_metrics
from zerohsi_jax.demo import noisy_estimates
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

CFG = ReconstructConfig(
    camera=CameraTrackingConfig(iterations=3),
    hsi=HSIFitConfig(iterations=4, root_only_iterations=1),
    refine=RefineConfig(iterations=5),
)


def test_instance_metrics_and_tables(tiny_demo, tmp_path):
    demo = tiny_demo
    est = np.stack([noisy_estimates(np.asarray(demo.truth.human.body_pose), 0.05, 10 + s) for s in (0, 1)])
    tile = lambda a: jnp.asarray(np.broadcast_to(a, (2,) + a.shape))  # noqa: E731
    obs = Observations(tile(demo.frames), tile(demo.human_masks), tile(demo.object_masks), jnp.asarray(est))
    result = reconstruct(demo.inputs, obs, demo.initial, demo.vposer, CFG, raster=demo.raster, progress=False)
    row = instance_metrics(demo.inputs, result, [demo.truth, demo.truth], demo.room, True, est, tmp_path)
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
    ideal = instance_metrics(demo.inputs, perfect, [truth, truth], demo.room, True, est, tmp_path)
    assert ideal["mpjpe_mm"] == 0.0 and ideal["object_translation_mm"] == 0.0 and ideal["diversity_m"] == 0.0
    assert ideal["penetration_percent"] < 0.1
    assert ideal["contact_percent"] > 0.0
    # Scored as a static instance, there is no moving object: no object error or contact columns.
    static = instance_metrics(demo.inputs, perfect, [truth, truth], demo.room, False, est, tmp_path)
    assert set(static) == expected - {"contact_percent", "object_penetration_cm", "object_translation_mm"}
    table = format_tables([{"instance": "a", "setting": "dynamic", "method": m, "seconds": 1.0, **row}
                           for m in VARIANTS], "small", 2, 3, 40, "quick")
    assert "Table 2 layout" in table and "w/o camera tracking" in table and "| ZeroHSI (ours) |" in table
    assert set(SUITES) == {"small", "full"}
