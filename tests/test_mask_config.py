"""Reading .mask files: ShapePipe's form accepted, mistakes named."""

import pytest

from shapepipe.errors import ConfigError
from shapepipe_modules.mask.config import default_config_path, read_mask_config

# The sections and keys of ShapePipe's example/cfis/config_onthefly.mask.
SHAPEPIPE_MASK = """
[PROGRAM_PATH]
WW_PATH = ww
WW_CONFIG_FILE = $SP_CONFIG/mask_default/default.ww
CDSCLIENT_PATH = findgsc2.2

[BORDER_PARAMETERS]
BORDER_MAKE = True
BORDER_WIDTH = 50
BORDER_FLAG_VALUE = 4

[HALO_PARAMETERS]
HALO_MAKE = True
HALO_MASKMODEL_PATH = $SP_CONFIG/mask_default/halo_mask.reg
HALO_MAG_LIM = 13.
HALO_SCALE_FACTOR = 0.05
HALO_MAG_PIVOT = 13.8
HALO_FLAG_VALUE = 2
HALO_REG_FILE = halo.reg

[SPIKE_PARAMETERS]
SPIKE_MAKE = True
SPIKE_MASKMODEL_PATH = $SP_CONFIG/mask_default/spike.reg
SPIKE_MAG_LIM = 18.
SPIKE_SCALE_FACTOR = 0.3
SPIKE_MAG_PIVOT = 13.8
SPIKE_FLAG_VALUE = 128
SPIKE_REG_FILE = spike.reg

[MESSIER_PARAMETERS]
MESSIER_MAKE = True
MESSIER_CAT_PATH = $SP_CONFIG/mask_default/messier.fits
MESSIER_PIXEL_SCALE = 0.187
MESSIER_SIZE_PLUS = 0.
MESSIER_FLAG_VALUE = 16

[NGC_PARAMETERS]
NGC_MAKE = False
NGC_CAT_PATH = $SP_CONFIG/mask_default/ngc_cat.fits
NGC_SIZE_PLUS = 0.
NGC_FLAG_VALUE = 32

[EXTERNAL_FLAG]
EF_MAKE = False

[MD_PARAMETERS]
MD_MAKE = False
MD_THRESH_FLAG = 0.3
MD_THRESH_REMOVE = 0.75
MD_REMOVE = False

[OTHER]
TEMP_DIRECTORY = .temp
KEEP_REG_FILE = False
KEEP_INDIVIDUAL_MASK = False
"""


@pytest.fixture
def sp_config(tmp_path, monkeypatch):
    folder = tmp_path / "mask_default"
    folder.mkdir()
    (folder / "halo_mask.reg").write_text("10 0\n0 10\n-10 0\n0 -10\n")
    (folder / "spike.reg").write_text("polygon(5,0,0,5,-5,0)\n")
    (folder / "messier.fits").write_bytes(b"")
    monkeypatch.setenv("SP_CONFIG", str(tmp_path))
    return tmp_path


def write(tmp_path, text, name="test.mask"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shapepipe_mask_file_is_accepted(sp_config):
    params = read_mask_config(write(sp_config, SHAPEPIPE_MASK))
    assert params.border.width == 50 and params.border.bit == 4
    assert params.halo.template_path == sp_config / "mask_default" / "halo_mask.reg"
    assert (params.halo.mag_lim, params.halo.scale_factor, params.halo.mag_pivot, params.halo.bit) == (
        13.0, 0.05, 13.8, 2
    )
    assert params.spike.bit == 128 and params.messier.bit == 16 and params.ngc is None
    assert params.satur is None and params.missing_data is None
    assert params.plane_bits() == {"MP_BORDER": 4, "MP_HALO": 2, "MP_SPIKE": 128, "MP_MESSIER": 16}
    notes = "\n".join(params.notes)
    for key in ("WW_PATH", "CDSCLIENT_PATH", "MESSIER_PIXEL_SCALE", "EF_MAKE", "TEMP_DIRECTORY",
                "KEEP_INDIVIDUAL_MASK", "SATUR_PARAMETERS"):
        assert key in notes


def test_default_configs_are_valid():
    exposure = read_mask_config(default_config_path("exposure"))
    assert exposure.border.width == 50 and exposure.satur.key == "SATURATE" and exposure.messier.cat_path is None
    tile = read_mask_config(default_config_path("tile"))
    assert tile.border is None and tile.satur is None and tile.halo is not None
    with pytest.raises(ValueError, match="kind"):
        default_config_path("ccd")


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("BORDER_WIDTH = 50", "BORDER_WIDHT = 50", r"\[BORDER_PARAMETERS\] BORDER_WIDHT: unknown key"),
        ("HALO_FLAG_VALUE = 2", "HALO_FLAG_VALUE = 3", r"\[HALO_PARAMETERS\] HALO_FLAG_VALUE: a flag value must be one bit"),
        ("SPIKE_MAG_LIM = 18.", "", r"\[SPIKE_PARAMETERS\] SPIKE_MAG_LIM: missing"),
        ("HALO_MAG_PIVOT = 13.8", "HALO_MAG_PIVOT = bright", r"HALO_MAG_PIVOT: expected a number"),
        ("[OTHER]", "[OTHERS]", r"\[OTHERS\]: unknown section"),
        ("mask_default/spike.reg", "mask_default/nothere.reg", r"SPIKE_MASKMODEL_PATH: file .*nothere.reg.* not found"),
        ("$SP_CONFIG/mask_default/halo", "$NOT_SET_ANYWHERE/halo", r"NOT_SET_ANYWHERE not set"),
        ("MESSIER_SIZE_PLUS = 0.", "MESSIER_SIZE_PLUS = -1", r"MESSIER_SIZE_PLUS: cannot be negative"),
    ],
)
def test_mistakes_name_file_section_and_key(sp_config, monkeypatch, old, new, message):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    assert old in SHAPEPIPE_MASK
    path = write(sp_config, SHAPEPIPE_MASK.replace(old, new))
    with pytest.raises(ConfigError, match=message) as error:
        read_mask_config(path)
    assert str(path) in str(error.value)


def test_every_problem_is_reported_at_once(sp_config):
    text = SHAPEPIPE_MASK.replace("BORDER_WIDTH = 50", "BORDER_WIDTH = wide").replace("NGC_MAKE = False", "NGC_MAKE = maybe")
    with pytest.raises(ConfigError) as error:
        read_mask_config(write(sp_config, text))
    assert len(error.value.problems) == 2


def test_relative_paths_beside_the_mask_file_and_our_sections(tmp_path):
    (tmp_path / "h.reg").write_text("polygon(1,0,0,1,-1,0)\n")
    text = """
[HALO_PARAMETERS]
HALO_MAKE = yes
HALO_MASKMODEL_PATH = h.reg
HALO_MAG_LIM = 12
HALO_SCALE_FACTOR = 0.1
HALO_MAG_PIVOT = 12
HALO_FLAG_VALUE = 1024
HALO_MIN_SCALE = 0.5
[SATUR_PARAMETERS]
SATUR_MAKE = True
SATUR_LEVEL = 40000
SATUR_FLAG_VALUE = 8192
[MD_PARAMETERS]
MD_MAKE = True
MD_THRESH_FLAG = 0.2
MD_THRESH_REMOVE = 0.9
MD_REMOVE = True
"""
    params = read_mask_config(write(tmp_path, text))
    assert params.halo.template_path == tmp_path / "h.reg" and params.halo.min_scale == 0.5
    assert params.satur.level == 40000 and params.satur.bit == 8192 and params.satur.grow == 2
    assert params.missing_data.remove is True
    assert params.border is None and params.spike is None


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_mask_config(tmp_path / "absent.mask")
    with pytest.raises(ConfigError, match="cannot parse"):
        read_mask_config(write(tmp_path, "KEY = value without section\n"))
