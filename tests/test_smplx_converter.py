"""converters.smplx_pkl_to_npz on a pickle written in the official chumpy layout (no chumpy needed)."""

import pickle
import sys
import types

import numpy as np
import pytest

from converters import smplx_pkl_to_npz
from zerohsi_jax.body import SMPLX
from zerohsi_jax.synthetic import build_synthetic_smplx


def _chumpy_modules():
    """Minimal stand-ins for `chumpy.ch.Ch` and a chumpy expression class, pickled the way chumpy
    pickles: protocol-2 object reconstruction followed by the instance dictionary."""
    package = types.ModuleType("chumpy")
    ch = types.ModuleType("chumpy.ch")
    ops = types.ModuleType("chumpy.ch_ops")

    class Ch:
        def __init__(self, x):
            self.x = x
            self._dirty_vars = set()
            self._itr = None

    class add:  # noqa: N801 - chumpy's own class name
        def __init__(self, a, b):
            self.a, self.b = a, b

    for cls, module in ((Ch, ch), (add, ops)):
        cls.__module__ = module.__name__
        cls.__qualname__ = cls.__name__
        setattr(module, cls.__name__, cls)
    package.ch, package.ch_ops = ch, ops
    return {"chumpy": package, "chumpy.ch": ch, "chumpy.ch_ops": ops}, Ch, add


@pytest.fixture(scope="module")
def official_like_pickle(tmp_path_factory):
    sparse = pytest.importorskip("scipy.sparse")
    arrays = build_synthetic_smplx(seed=5, num_betas=10)
    modules, ch_class, _ = _chumpy_modules()
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        content = {k: v for k, v in arrays.items() if k != "gender"}
        for key in ("v_template", "shapedirs", "posedirs", "weights", "hands_componentsl", "hands_meanr"):
            content[key] = ch_class(arrays[key])
        content["J_regressor"] = sparse.csc_matrix(arrays["J_regressor"])
        content["joint2num"] = {"pelvis": 0}  # metadata dicts of the official files are dropped
        content["bs_style"] = "lbs"
        path = tmp_path_factory.mktemp("smplx_pkl") / "SMPLX_NEUTRAL.pkl"
        with open(path, "wb") as f:
            pickle.dump(content, f, protocol=2)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return path, arrays


def test_pickle_converts_to_the_same_arrays_without_chumpy(official_like_pickle, tmp_path):
    path, arrays = official_like_pickle
    assert "chumpy" not in sys.modules
    out = tmp_path / "SMPLX_NEUTRAL.npz"
    assert smplx_pkl_to_npz.main([str(path), str(out)]) == 0
    assert "chumpy" not in sys.modules
    with np.load(out) as npz:
        converted = {k: npz[k] for k in npz.files}
    for key, value in arrays.items():
        if key == "gender":
            continue
        np.testing.assert_array_equal(converted[key], value, err_msg=key)
    assert "joint2num" not in converted and str(converted["bs_style"]) == "lbs"


def test_converted_file_loads_and_poses_like_the_source(official_like_pickle, tmp_path):
    path, arrays = official_like_pickle
    source = SMPLX.from_arrays(arrays, source="source")
    converted = SMPLX.load(smplx_pkl_to_npz.convert(path, tmp_path / "SMPLX_NEUTRAL.npz"))
    rng = np.random.default_rng(0)
    pose = dict(
        body_pose=rng.normal(0, 0.4, (2, 63)),
        betas=rng.normal(size=(2, 10)),
        left_hand_pose=rng.normal(size=(2, 6)),
    )
    np.testing.assert_array_equal(np.asarray(converted(**pose).vertices), np.asarray(source(**pose).vertices))


def test_chumpy_expressions_are_reported_not_guessed(tmp_path):
    modules, ch_class, add_class = _chumpy_modules()
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        path = tmp_path / "SMPLX_NEUTRAL.pkl"
        with open(path, "wb") as f:
            pickle.dump({"v_template": add_class(ch_class(np.zeros(3)), ch_class(np.ones(3)))}, f, protocol=2)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    with pytest.raises(ValueError, match=r"'v_template' is a chumpy expression \(chumpy.ch_ops.add\)"):
        smplx_pkl_to_npz.load_smplx_pkl(path)
