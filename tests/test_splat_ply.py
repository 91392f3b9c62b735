"""INRIA 3DGS .ply reading and writing."""

import numpy as np
import pytest
from plyfile import PlyData, PlyElement
from splat_scenes import random_scene

from zerohsi_jax.splat import PlyFormatError, load_ply, save_ply


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_is_exact(degree, seed, tmp_path):
    g = random_scene(np.random.default_rng(seed), 57, sh_degree=degree)
    path = tmp_path / "g.ply"
    save_ply(path, g)
    back = load_ply(path)
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        np.testing.assert_array_equal(np.asarray(getattr(back, name)), np.asarray(getattr(g, name)))
    props = [p.name for p in PlyData.read(str(path))["vertex"].properties]
    rest = 3 * ((degree + 1) ** 2 - 1)
    expected = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    expected += [f"f_rest_{i}" for i in range(rest)] + ["opacity"]
    expected += [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
    assert props == expected


def test_f_rest_is_channel_major(tmp_path):
    """f_rest[c * 15 + k - 1] holds coefficient k of channel c (the INRIA layout)."""
    g = random_scene(np.random.default_rng(0), 4, sh_degree=3)
    path = tmp_path / "g.ply"
    save_ply(path, g)
    v = PlyData.read(str(path))["vertex"]
    sh = np.asarray(g.sh)
    for c in range(3):
        for k in range(1, 16):
            np.testing.assert_array_equal(np.asarray(v[f"f_rest_{c * 15 + k - 1}"]), sh[:, k, c])


def _write(path, props, n=3, values=None):
    data = np.zeros(n, dtype=[(p, "f4") for p in props])
    for p in props:
        data[p] = 0.1 if values is None else values.get(p, 0.1)
    PlyData([PlyElement.describe(data, "vertex")]).write(str(path))


BASE = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"] + [f"scale_{i}" for i in range(3)] + [
    f"rot_{i}" for i in range(4)
]


def test_malformed_files_are_named_with_the_problem(tmp_path):
    missing = tmp_path / "missing.ply"
    with pytest.raises(FileNotFoundError, match="missing.ply"):
        load_ply(missing)
    junk = tmp_path / "junk.ply"
    junk.write_text("this is not a ply file")
    with pytest.raises(PlyFormatError, match="junk.ply.*not a readable PLY"):
        load_ply(junk)
    no_opacity = tmp_path / "no_opacity.ply"
    _write(no_opacity, [p for p in BASE if p != "opacity"])
    with pytest.raises(PlyFormatError, match=r"no_opacity.ply.*\['opacity'\]"):
        load_ply(no_opacity)
    bad_rest = tmp_path / "bad_rest.ply"
    _write(bad_rest, BASE + [f"f_rest_{i}" for i in range(10)])
    with pytest.raises(PlyFormatError, match="bad_rest.ply: 10 f_rest"):
        load_ply(bad_rest)
    nan = tmp_path / "nan.ply"
    _write(nan, BASE, values={"x": np.nan})
    with pytest.raises(PlyFormatError, match="nan.ply: 3 Gaussians have non-finite means"):
        load_ply(nan)
    zero_rot = tmp_path / "zero_rot.ply"
    _write(zero_rot, BASE, values={f"rot_{i}": 0.0 for i in range(4)})
    with pytest.raises(PlyFormatError, match="zero quaternion"):
        load_ply(zero_rot)


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    g = random_scene(np.random.default_rng(0), 5)
    path = tmp_path / "out.ply"

    def broken_write(self, stream):
        with open(stream, "wb") as f:
            f.write(b"ply\nformat binary_little_endian 1.0\n")  # a header and nothing more
        raise OSError("disk full")

    monkeypatch.setattr(PlyData, "write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        save_ply(path, g)
    assert list(tmp_path.iterdir()) == []
