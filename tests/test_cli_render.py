"""`zerohsi-jax render` on files, as a person would run it."""

import json

import imageio.v3 as iio
import jax.numpy as jnp
import numpy as np
from splat_scenes import random_camera, random_scene

from zerohsi_jax.cli import main
from zerohsi_jax.splat import RasterConfig, fit_capacity, render, save_ply


def test_render_command_writes_the_render(tmp_path, seed):
    rng = np.random.default_rng(seed)
    g = random_scene(rng, 120, sh_degree=3)
    cam = random_camera(rng, 40, 32)
    save_ply(tmp_path / "scene.ply", g)
    cam.save_json(tmp_path / "cam.json")
    code = main(["render", str(tmp_path / "scene.ply"), "--camera", str(tmp_path / "cam.json"),
                 "-o", str(tmp_path / "out.png"), "--background", "1,1,1", "--depth", str(tmp_path / "d.png")])
    assert code == 0
    img = iio.imread(tmp_path / "out.png")
    assert img.shape == (32, 40, 3) and img.dtype == np.uint8
    expected = render(g, cam, jnp.ones(3), config=fit_capacity(g, cam, RasterConfig())).rgb
    expected = (np.clip(np.asarray(expected), 0, 1) * 255 + 0.5).astype(np.uint8)
    assert np.abs(img.astype(int) - expected.astype(int)).max() <= 1
    assert iio.imread(tmp_path / "d.png").dtype == np.uint16


def test_render_command_reports_bad_inputs(tmp_path, capsys):
    (tmp_path / "cam.json").write_text(json.dumps({"width": 10}))
    save_ply(tmp_path / "s.ply", random_scene(np.random.default_rng(0), 4))
    code = main(["render", str(tmp_path / "s.ply"), "--camera", str(tmp_path / "cam.json"),
                 "-o", str(tmp_path / "o.png")])
    assert code == 2
    assert "cam.json: missing key 'height'" in capsys.readouterr().err
    code = main(["render", str(tmp_path / "nope.ply"), "--camera", str(tmp_path / "cam.json"), "-o", "x.png"])
    assert code == 2
    assert "nope.ply" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()
