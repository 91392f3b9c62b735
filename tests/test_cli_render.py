"""`zerohsi-jax render` on files, as a person would run it."""

import json

import imageio.v3 as iio
import jax.numpy as jnp
import numpy as np
from splat_scenes import random_camera, random_scene

from zerohsi_jax.cli import main
from zerohsi_jax.splat import render, save_ply


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
    out = render(g, cam, jnp.ones(3))
    expected = (np.clip(np.asarray(out.rgb), 0, 1) * 255 + 0.5).astype(np.uint8)
    assert np.abs(img.astype(int) - expected.astype(int)).max() <= 1
    # The depth picture is the expected depth in whole millimetres where the render is mostly
    # opaque, and 0 elsewhere.
    depth = iio.imread(tmp_path / "d.png")
    assert depth.shape == (32, 40) and depth.dtype == np.uint16
    drawn = np.asarray(out.alpha) > 0.5
    assert drawn.mean() > 0.1, "the scene should cover part of the image"
    expected_mm = np.rint(np.asarray(out.depth, np.float64)[drawn] * 1000.0)
    assert expected_mm.min() > 500, "depths of a few metres: a millimetre/metre mix-up would show"
    np.testing.assert_array_equal(depth[drawn], expected_mm)
    assert np.all(depth[~drawn] == 0)


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
    code = main(["render", str(tmp_path), "--camera", str(tmp_path / "cam.json"), "-o", "x.png"])
    assert code == 2
    assert f"{tmp_path}: is a directory, not a .ply file" in capsys.readouterr().err
    # A mirrored pose is refused before anything is rendered.
    mirrored = np.diag([1.0, 1.0, -1.0, 1.0]).tolist()
    (tmp_path / "cam.json").write_text(json.dumps({"width": 10, "height": 8, "viewmat": mirrored, "fov_y_deg": 50}))
    code = main(["render", str(tmp_path / "s.ply"), "--camera", str(tmp_path / "cam.json"),
                 "-o", str(tmp_path / "o.png")])
    assert code == 2
    assert "cam.json: the rotation block of 'viewmat'" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()
