"""Reading .setools files: sections, keys, and errors with file and line."""

from fractions import Fraction
from pathlib import Path

import pytest

from shapepipe_modules.setools.config import (
    Expression,
    LabelText,
    check_setools,
    read_setools,
    split_key_value,
    strip_comment,
)
from shapepipe_modules.setools.language import SetoolsError
from shapepipe_modules.setools.runner import DEFAULT_SELECTION, setools, validate_options

DATA = Path(__file__).parent / "data"
CFIS_LIKE = DATA / "setools_cfis_like.setools"


def write(tmp_path, text, name="sel.setools"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_cfis_like_file_sections():
    config = read_setools(CFIS_LIKE)
    assert list(config.masks) == ["preselect", "flag", "star_selection", "fwhm_mag_cut"]
    assert [m.save for m in config.masks.values()] == [False, False, True, False]
    star = config.masks["star_selection"]
    assert len(star.cuts) == 6  # the commented-out cut is ignored
    assert star.cuts[2].node.masks() == {"preselect"}
    split = config.rand_splits["star_split"]
    assert split.ratio == Fraction(1, 5)
    assert split.masks == ["star_selection"]
    assert split.output_names() == ("star_split_ratio_20", "star_split_ratio_80")
    size_mag = config.plots["size_mag"]
    assert size_mag.kind == "plot"
    assert size_mag.series() == ["1", "2"]
    assert size_mag.get("LABEL", "1").parts == ["All"]
    label = size_mag.get("LABEL", "2")
    assert isinstance(label, LabelText)
    assert [type(p) for p in label.parts] == [str, Expression, str]
    assert label.parts[0] == "Stars, mean FWHM: "
    assert label.parts[2] == " arcsec"
    assert size_mag.get("MARKERSIZE", "2") == 3.0
    assert size_mag.get("YLABEL", "").parts == ["Mag"]
    assert config.plots["hist_mag_stars"].kind == "hist"
    assert config.plots["hist_mag_stars"].get("BIN", "") == 20
    assert config.plots["fwhm_field"].series() == [""]
    labels = [label for label, _ in config.stats["star_stat"].entries]
    assert labels[0] == "Nb objects full cat"
    assert labels[3] == "stars/deg^2"
    assert len(labels) == 9


def test_default_selection_file_is_valid():
    assert check_setools(DEFAULT_SELECTION) == []
    config = read_setools(DEFAULT_SELECTION)
    assert config.rand_splits["star_split"].output_names() == ("star_split_ratio_20", "star_split_ratio_80")
    assert config.masks["star_selection"].save


def test_unnamed_sections_get_numbered_names(tmp_path):
    config = read_setools(write(tmp_path, "[MASK]\nA > 1\n[MASK]\nA < 2\n[STATS]\nn = len(A)\n"))
    assert list(config.masks) == ["mask_1", "mask_2"]
    assert list(config.stats) == ["stat_1"]


def test_comments_and_quotes():
    assert strip_comment('LABEL = "a # b" # comment') == 'LABEL = "a # b" '
    assert split_key_value('"N <= 3 = x" = len(A)') == ("N <= 3 = x", "len(A)")
    assert split_key_value("FLAG_STAR = A <= 3") == ("FLAG_STAR", "A <= 3")


BAD_FILES = [
    ("A > 1\n", 1, "outside any section"),
    ("[FOO:x]\n", 1, "unknown section type 'FOO'"),
    ("[MASK:a]\nA > \n", 2, "expected a number"),
    ("[MASK:a]\nA + 1\n", 2, "must be a comparison"),
    ("[MASK:a]\n{b}\n[MASK:b]\nA > 1\n", 2, "'b' is not defined before [MASK:a]"),
    ("[MASK:a]\nA > mode(A{b})\n[MASK:b]\nA > 1\n", 2, "'b' is not defined before"),
    ("[MASK:a]\nA > mean(A{a})\n", 2, "refers to itself"),
    ("[MASK:a]\nA > 1\n[MASK:a]\nA < 1\n", 3, "defined twice"),
    ("[PLOT:p]\nTYPE = pie\n", 2, "TYPE must be one of"),
    ("[PLOT:p]\nTYPE = hist\nWIDTH = 3\n", 3, "unknown PLOT key 'WIDTH'"),
    ("[PLOT:p]\nTYPE = hist\nY = A{nomask}\n", 3, "mask 'nomask' used in"),
    ("[PLOT:p]\nTYPE = plot\nY = A\n", 1, "needs X"),
    ("[PLOT:p]\nY = A\n", 1, "needs TYPE"),
    ("[PLOT:p]\nTYPE = hist\nY = A\nTITLE = \"n=@len(A)\"\n", 4, "unpaired '@'"),
    ("[PLOT:p]\nTYPE = hist\nY = A\nBIN = many\n", 4, "needs an integer"),
    ("[PLOT:p]\nTYPE = hist\nY = A\nTITLE_1 = x\n", 4, "takes no _1 suffix"),
    ("[STAT:s]\nn = len(A) > 3\n", 2, "comparison is not allowed"),
    ("[MASK:m]\nA > 0\n[RAND_SPLIT:r]\nRATIO = 50\nMASK = m\n", 4, "same file name"),
    ("[MASK:m]\nA > 0\n[RAND_SPLIT:r]\nRATIO = 150\nMASK = m\n", 4, "between 0 and 100"),
    ("[MASK:m]\nA > 0\n[RAND_SPLIT:r]\nRATIO = 12.5\nMASK = m\n", 4, "whole percentage"),
    ("[MASK:m]\nA > 0\n[RAND_SPLIT:r]\nRATIO = 20\n", 3, "needs MASK"),
    ("[RAND_SPLIT:r]\nRATIO = 20\nMASK = m\n", 1, "'m' is not a mask"),
    ("[RAND_SPLIT:r]\nRATIO = 20\nMASK = m\nSIZE = 3\n", 4, "unknown RAND_SPLIT key"),
    ("[NEW_CAT:c]\nOUTPUT_FORMAT = hdf5\n", 2, "OUTPUT_FORMAT must be"),
]


@pytest.mark.parametrize("text, line, fragment", BAD_FILES)
def test_errors_name_file_and_line(tmp_path, text, line, fragment):
    path = write(tmp_path, text)
    problems = check_setools(path)
    assert problems, text
    assert any(p.startswith(f"{path}:{line}: ") and fragment in p for p in problems), problems
    with pytest.raises(SetoolsError):
        read_setools(path)


def test_every_problem_is_reported(tmp_path):
    path = write(tmp_path, "[MASK:a]\nA >\nB <\n[PLOT:p]\nTYPE = pie\n")
    lines = sorted(int(p.split(":")[1]) for p in check_setools(path))
    assert lines == [2, 3, 5]


def test_masks_may_be_used_anywhere_outside_mask_sections(tmp_path):
    # A plot or statistic may use a mask defined later in the file.
    path = write(tmp_path, "[STAT:s]\nn = len(A{m})\n[MASK:m]\nA > 0\n")
    assert check_setools(path) == []


def test_module_declaration():
    spec = setools.spec
    assert spec.name == "setools"
    assert "setools_runner" in spec.aliases
    assert spec.input_modules == ("sextractor",)
    assert spec.file_patterns == ("sexcat",)
    assert spec.file_exts == (".fits",)
    assert spec.numbering_scheme == "-0000000-0"
    assert {o.name for o in spec.options} == {"SETOOLS_CONFIG_PATH", "MIN_N_STARS", "STAR_MASK"}
    assert spec.validate is validate_options


def test_validate_hook(tmp_path):
    good = {"SETOOLS_CONFIG_PATH": str(CFIS_LIKE), "MIN_N_STARS": 10, "STAR_MASK": ""}
    assert validate_options(good) == []
    assert validate_options({**good, "STAR_MASK": "star_selection"}) == []
    problems = validate_options({**good, "STAR_MASK": "stars"})
    assert len(problems) == 1 and "STAR_MASK: 'stars' is not a mask" in problems[0]
    bad = write(tmp_path, "[MASK:a]\nA >> 1\n")
    problems = validate_options({**good, "SETOOLS_CONFIG_PATH": str(bad)})
    assert len(problems) == 1
    assert problems[0].startswith(f"SETOOLS_CONFIG_PATH: {bad}:2: ")
    assert validate_options({**good, "MIN_N_STARS": -1}) == ["MIN_N_STARS must be 0 or more"]
