"""Adding a loss term without touching the optimiser: keep the feet on the floor during the HSI fit.

A term is a plain function of the stage's context (`zerohsi_jax.reconstruct.hsi_fit.HSIContext`:
the render, the video frame, the masks, the current human and object pose) returning a scalar;
its weight goes in the config. The stages sum `weight * term(context)` over the configured terms.

    python experiments/custom_loss.py            # a small demo problem, with and without the term
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from zerohsi_jax.metrics import ground_truth_errors
from zerohsi_jax.reconstruct import Observations, losses, quick_schedule, reconstruct
from zerohsi_jax.synthetic.instances import build_demo_scene, noisy_estimates


def feet_on_floor(body, floor_height: float = 0.0):
    """A term: the lowest foot vertex of the posed body should touch y = floor_height."""
    from zerohsi_jax.body import foot_vertex_ids

    feet = body.vertex_subset(foot_vertex_ids(body))

    def term(ctx):
        _, verts = feet(ctx.human.global_orient[None], ctx.human.body_pose[None], ctx.human.transl[None])
        return (jnp.min(verts[0, :, 1]) - floor_height) ** 2

    return term


def main():
    demo = build_demo_scene(8, 96)
    est = noisy_estimates(np.asarray(demo.truth.human.body_pose), 0.05, 100)[None]
    obs = Observations(jnp.asarray(demo.frames[None]), jnp.asarray(demo.human_masks[None]),
                       jnp.asarray(demo.object_masks[None]), jnp.asarray(est))
    base = quick_schedule()
    terms = {**losses.HSI_TERMS, "feet_on_floor": feet_on_floor(demo.inputs.body)}
    with_term = dataclasses.replace(
        base, hsi=dataclasses.replace(base.hsi, loss_weights={**base.hsi.loss_weights, "feet_on_floor": 10.0})
    )
    for name, cfg, kw in (("paper losses", base, {}), ("+ feet_on_floor", with_term, {"hsi_terms": terms})):
        result = reconstruct(demo.inputs, obs, demo.initial, demo.vposer, cfg, raster=demo.raster, **kw)
        err = ground_truth_errors(demo.inputs.body, result, demo.truth)
        print(f"{name:18s} MPJPE {err['mpjpe_stage2_mm']:.1f} mm (stage 2), root {err['root_translation_mm']:.1f} mm")


if __name__ == "__main__":
    main()
