"""SExtractor configuration files and the module's validate hook."""

import numpy as np
import pytest

from shapepipe_modules.sextractor import config_files as cf
from shapepipe_modules.sextractor.columns import magnitude, magnitude_error, unsupported_parameters
from shapepipe_modules.sextractor.runner import DATA_DIR, OPTIONS, _requirements, validate


def options(**overrides):
    values = {o.name: o.default for o in OPTIONS}
    values.update(overrides)
    return values


def test_dot_sex_settings_from_shipped_files():
    exp = cf.ExtractionSettings.from_dot_sex(cf.read_dot_sex(DATA_DIR / "default_exp.sex"))
    tile = cf.ExtractionSettings.from_dot_sex(cf.read_dot_sex(DATA_DIR / "default_tile.sex"))
    assert exp.detect_thresh == 1.5 and exp.detect_minarea == 5 and exp.deblend_mincont == 0.001
    assert exp.back_size == (64, 64) and exp.back_filtersize == (3, 3) and exp.back_type == "AUTO"
    assert exp.phot_autoparams == (2.5, 3.5) and exp.phot_apertures == (5.0,)
    assert tile.back_type == "MANUAL" and tile.deblend_mincont == 0.0005


def test_dot_sex_parsing_details(tmp_path):
    path = tmp_path / "a.sex"
    path.write_text("# comment\nBACK_SIZE 32,48 # mesh\nPHOT_APERTURES 3, 5 ,8\nFILTER N\nFILTER_THRESH\n")
    raw = cf.read_dot_sex(path)
    assert raw["FILTER_THRESH"] == ""
    settings = cf.ExtractionSettings.from_dot_sex(raw, path)
    assert settings.back_size == (32, 48) and settings.phot_apertures == (3.0, 5.0, 8.0)
    assert settings.filter is False
    path.write_text("BACK_TYPE SOMETIMES\n")
    with pytest.raises(cf.ConfigFileError, match="BACK_TYPE"):
        cf.ExtractionSettings.from_dot_sex(cf.read_dot_sex(path), path)


def test_dot_param_and_conv(tmp_path):
    params = cf.read_dot_param(DATA_DIR / "default.param")
    names = [p.name for p in params]
    assert names[0] == "NUMBER" and "VIGNET" in names
    vignet = params[names.index("VIGNET")]
    assert vignet.shape == (51, 51) and str(vignet) == "VIGNET(51,51)"
    bad = tmp_path / "bad.param"
    bad.write_text("NUMBER\nFLUX_APER(\n")
    with pytest.raises(cf.ConfigFileError, match="line 2"):
        cf.read_dot_param(bad)
    kernel = cf.read_dot_conv(DATA_DIR / "default.conv")
    assert kernel.shape == (3, 3) and abs(kernel.sum() - 1) < 1e-12 and kernel[1, 1] == 0.25
    raw = tmp_path / "raw.conv"
    raw.write_text("CONV NONORM\n1 2\n3 4\n")
    np.testing.assert_array_equal(cf.read_dot_conv(raw), [[1, 2], [3, 4]])


def test_magnitudes_follow_sextractor():
    np.testing.assert_allclose(magnitude([1000.0, 0.0, -5.0], 30.0), [22.5, 99.0, 99.0])
    np.testing.assert_allclose(magnitude_error([100.0, -1.0], [10.0, 1.0]), [0.10857, 99.0])


def test_validate_accepts_defaults_and_rejects_unknown_columns(tmp_path):
    assert validate(options()) == []
    param = tmp_path / "x.param"
    param.write_text("NUMBER\nSPREAD_MODEL\nX_IMAGE(3)\n")
    problems = validate(options(DOT_PARAM_FILE=str(param)))
    assert len(problems) == 1 and "SPREAD_MODEL" in problems[0] and "X_IMAGE(3)" in problems[0]
    assert validate(options(DOT_PARAM_FILE=str(param), ENGINE="sextractor")) == []
    assert unsupported_parameters(cf.read_dot_param(DATA_DIR / "default.param")) == []


def test_validate_cross_field_problems():
    problems = validate(options(DETECTION_WEIGHT=True, ZP_FROM_HEADER=True, CHECKIMAGE=["APERTURES"],
                                PSF_FILE=True))
    text = "\n".join(problems)
    for word in ("DETECTION_WEIGHT", "ZP_KEY", "APERTURES", "PSF_FILE"):
        assert word in text
    assert validate(options(FLAG_IMAGE=False)) == ["IMAFLAGS_ISO in DOT_PARAM_FILE needs FLAG_IMAGE = True"]


def test_requirements_depend_on_engine():
    assert _requirements(options()) == (("sep", "numba"), ())
    packages, executables = _requirements(options(ENGINE="sextractor", EXEC_PATH="sex"))
    assert packages == () and len(executables) == 1 and executables[0] in ("sex", "source-extractor")
