"""SETools actions and the setools module on synthetic FITS-LDAC catalogues with known truth."""

import logging
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from shapepipe.errors import JobError
from shapepipe.job import Job
from shapepipe_modules.io.ldac import read_ldac, write_ldac
from shapepipe_modules.setools.actions import (
    compute_masks,
    random_split,
    split_sizes,
    stat_text,
)
from shapepipe_modules.setools.config import RandSplitSection, read_setools
from shapepipe_modules.setools.language import SetoolsError, histogram_mode
from shapepipe_modules.setools.runner import DEFAULT_SELECTION, setools

DATA = Path(__file__).parent / "data"
CFIS_LIKE = DATA / "setools_cfis_like.setools"
PIXEL_SCALE = 0.187
NUMBER = "-2113737-10"


def synthetic_catalogue(rng, n_stars=150, n_galaxies=400, star_fwhm=3.7, star_scatter=0.1):
    """A CFIS-like CCD catalogue: stars on a locus, galaxies larger; returns (columns, is_star)."""
    n = n_stars + n_galaxies
    is_star = np.r_[np.ones(n_stars, bool), np.zeros(n_galaxies, bool)]
    mag = np.where(is_star, rng.uniform(16.5, 23.0, n), rng.uniform(18.0, 25.0, n))
    fwhm = np.where(
        is_star,
        rng.normal(star_fwhm, star_scatter, n),
        star_fwhm + 0.8 + rng.exponential(2.0, n),
    )
    flags = np.where(rng.random(n) < 0.05, 2, 0).astype(np.int16)
    imaflags = np.where(rng.random(n) < 0.03, 1, 0).astype(np.int32)
    columns = {
        "NUMBER": np.arange(1, n + 1, dtype=np.int32),
        "MAG_AUTO": mag.astype(np.float32),
        "FWHM_IMAGE": fwhm.astype(np.float32),
        "FLUX_RADIUS": (fwhm / 2).astype(np.float32),
        "SNR_WIN": (10 ** (0.4 * (25 - mag))).astype(np.float32),
        "FLAGS": flags,
        "IMAFLAGS_ISO": imaflags,
        "X_IMAGE": rng.uniform(1, 2048, n).astype(np.float32),
        "Y_IMAGE": rng.uniform(1, 4612, n).astype(np.float32),
        "VIGNET": rng.normal(0, 1, (n, 11, 11)).astype(np.float32),
    }
    return columns, is_star


def image_header():
    header = fits.Header()
    header["NAXIS1"] = 2048
    header["NAXIS2"] = 4612
    header["CTYPE1"] = "RA---TAN"
    header["CTYPE2"] = "DEC--TAN"
    header["SEXGAIN"] = 1.6
    return header


def write_catalogue(path, columns):
    from astropy.table import Table

    write_ldac(path, Table(columns), image_header())
    return path


def make_job(tmp_path, catalogue, number=NUMBER, seed=7, **options):
    values = {"SETOOLS_CONFIG_PATH": str(CFIS_LIKE), "MIN_N_STARS": 10, "STAR_MASK": ""}
    values.update(options)
    output = Path(tempfile.mkdtemp(prefix="out", dir=tmp_path))
    return Job(
        module="setools",
        module_run="setools",
        number=number,
        inputs=[Path(catalogue)],
        output_dir=output,
        log_dir=tmp_path,
        options=values,
        logger=logging.getLogger("test_setools"),
        run_dir=tmp_path,
        seed=seed,
    )


@pytest.fixture
def catalogue(tmp_path):
    columns, is_star = synthetic_catalogue(np.random.default_rng(3))
    path = write_catalogue(tmp_path / f"sexcat{NUMBER}.fits", columns)
    return path, columns, is_star


def expected_cfis_like_masks(c):
    """The CFIS-like file's masks, written directly in numpy."""
    clean = (c["FLAGS"] == 0) & (c["IMAFLAGS_ISO"] == 0)
    fwhm, mag = c["FWHM_IMAGE"], c["MAG_AUTO"]
    preselect = (mag > 0) & (mag < 21) & (fwhm > 0.3 / 0.187) & (fwhm < 1.5 / 0.187) & clean
    mode = histogram_mode(fwhm[preselect])
    stars = (mag > 18) & (mag < 22) & (fwhm <= mode + 0.3) & (fwhm >= mode - 0.3) & clean
    cut = (fwhm > 0) & (fwhm < 40) & (mag < 35) & clean
    return {"preselect": preselect, "flag": clean, "star_selection": stars, "fwhm_mag_cut": cut}, mode


def test_masks_match_numpy(catalogue):
    _, columns, _ = catalogue
    masks = compute_masks(read_setools(CFIS_LIKE), columns, len(columns["NUMBER"]))
    expected, mode = expected_cfis_like_masks(columns)
    assert mode == pytest.approx(3.7, abs=0.1)
    for name, mask in expected.items():
        np.testing.assert_array_equal(masks[name], mask, err_msg=name)
    assert 50 < masks["star_selection"].sum() < 150


def test_mask_references_restrict_bare_columns(tmp_path):
    x = np.arange(20.0)
    columns = {"X": x, "Y": x[::-1].copy()}
    path = tmp_path / "m.setools"
    path.write_text(
        "[MASK:low]\nX < 10\n[MASK:high_y]\nY > 3\n"
        "[MASK:both]\n{low}\n{high_y}\nX >= median(X)\n"
        "[MASK:global]\nX >= median(X{low})\n"
    )
    masks = compute_masks(read_setools(path), columns, 20)
    in_scope = (x < 10) & (x[::-1] > 3)
    np.testing.assert_array_equal(masks["both"], in_scope & (x >= np.median(x[in_scope])))
    np.testing.assert_array_equal(masks["global"], x >= np.median(x[x < 10]))


def test_elementwise_masked_column_in_a_cut_is_an_error(tmp_path):
    path = tmp_path / "m.setools"
    path.write_text("[MASK:low]\nX < 10\n[MASK:bad]\nX{low} > 3\n")
    with pytest.raises(SetoolsError, match=r"m.setools:4: .*not one per row"):
        compute_masks(read_setools(path), {"X": np.arange(20.0)}, 20)


def test_split_sizes_are_exact():
    for percent in (1, 10, 20, 33, 80, 99):
        section = RandSplitSection("s", 1, ratio=Fraction(percent, 100))
        for n in range(0, 301):
            first, second = split_sizes(n, section)
            assert first == -(-n * percent // 100)  # ceil with integers
            assert first + second == n


def test_random_split_partitions_the_sample():
    mask = np.random.default_rng(0).random(1000) < 0.3
    section = RandSplitSection("s", 1, ratio=Fraction(1, 5))
    first, second = random_split(mask, section, np.random.default_rng(5))
    assert not (first & second).any()
    np.testing.assert_array_equal(first | second, mask)
    assert first.sum() == -(-mask.sum() * 20 // 100)
    again, _ = random_split(mask, section, np.random.default_rng(5))
    np.testing.assert_array_equal(first, again)


def read_stat(path):
    lines = path.read_text().splitlines()
    assert lines[0] == "# Statistics"
    values = {}
    for line in lines[1:]:
        label, value = line.rsplit(" = ", 1)
        values[label] = float(value)
    return values


def test_runner_outputs(tmp_path, catalogue):
    path, columns, _ = catalogue
    job = make_job(tmp_path, path)
    summary = setools(job)
    out = job.output_dir
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == sorted([
        f"mask/star_selection{NUMBER}.fits",
        f"rand_split/star_split_ratio_20{NUMBER}.fits",
        f"rand_split/star_split_ratio_80{NUMBER}.fits",
        f"plot/size_mag{NUMBER}.png",
        f"plot/hist_mag_stars{NUMBER}.png",
        f"plot/fwhm_field{NUMBER}.png",
        f"stat/star_stat{NUMBER}.txt",
    ])
    expected, mode = expected_cfis_like_masks(columns)
    stars = expected["star_selection"]

    # Mask catalogue: FITS-LDAC, every column kept (VIGNET too), image header kept.
    mask_file = out / f"mask/star_selection{NUMBER}.fits"
    with fits.open(mask_file) as hdus:
        assert [h.name for h in hdus] == ["PRIMARY", "LDAC_IMHEAD", "LDAC_OBJECTS"]
    table, header = read_ldac(mask_file)
    np.testing.assert_array_equal(table["NUMBER"], columns["NUMBER"][stars])
    np.testing.assert_array_equal(table["VIGNET"], columns["VIGNET"][stars])
    assert header["NAXIS2"] == 4612 and header["SEXGAIN"] == 1.6

    # Random split: 20% (rounded up) and the rest, together the star sample.
    part20, _ = read_ldac(out / f"rand_split/star_split_ratio_20{NUMBER}.fits")
    part80, _ = read_ldac(out / f"rand_split/star_split_ratio_80{NUMBER}.fits")
    n_stars = int(stars.sum())
    assert len(part20) == -(-n_stars * 20 // 100)
    assert len(part20) + len(part80) == n_stars
    assert sorted(np.r_[part20["NUMBER"], part80["NUMBER"]]) == sorted(columns["NUMBER"][stars])
    assert part80["VIGNET"].shape[1:] == (11, 11)
    assert summary["n_star_split_ratio_20"] == len(part20)
    assert summary["n_objects"] == len(columns["NUMBER"])

    # Statistics: ShapePipe layout, values from numpy.
    stat = read_stat(out / f"stat/star_stat{NUMBER}.txt")
    fwhm = columns["FWHM_IMAGE"]
    assert stat["Nb objects full cat"] == len(fwhm)
    assert stat["Nb objects not masked"] == expected["flag"].sum()
    assert stat["Nb stars"] == n_stars
    assert stat["stars/deg^2"] == pytest.approx(n_stars / (4612 * 0.187 / 3600) / (2048 * 0.187 / 3600), rel=1e-12)
    assert stat["Mean star fwhm selected (arcsec)"] == pytest.approx(np.mean(fwhm[stars]) * 0.187, rel=1e-6)
    assert stat["Standard deviation fwhm star selected (arcsec)"] == pytest.approx(
        np.std(fwhm[stars]) * 0.187, rel=1e-6)
    assert stat["Mode fwhm used (arcsec)"] == pytest.approx(mode * 0.187, rel=1e-12)
    assert stat["Min fwhm cut (arcsec)"] == pytest.approx(mode * 0.187 - 0.3 * 0.187, rel=1e-12)

    # Plots: real PNG images.
    import matplotlib.image

    for name in ("size_mag", "hist_mag_stars", "fwhm_field"):
        png = out / f"plot/{name}{NUMBER}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0


def split_numbers(job):
    table, _ = read_ldac(job.output_dir / f"rand_split/star_split_ratio_20{job.number}.fits")
    return sorted(table["NUMBER"])


def selection_without_plots(tmp_path, extra=""):
    """The CFIS-like masks and split only (plots are slow and tested elsewhere)."""
    text = CFIS_LIKE.read_text()
    path = tmp_path / "no_plots.setools"
    path.write_text(text[:text.index("[PLOT:")].replace("RATIO = 20\n", "RATIO = 20\n" + extra))
    return str(path)


def test_random_split_is_seeded_by_the_file_number(tmp_path, catalogue):
    path, _, _ = catalogue
    selection = selection_without_plots(tmp_path)
    first = make_job(tmp_path, path, SETOOLS_CONFIG_PATH=selection)
    setools(first)
    # Same run seed and number: a new job gets the same split.
    again = make_job(tmp_path, path, SETOOLS_CONFIG_PATH=selection)
    setools(again)
    assert split_numbers(first) == split_numbers(again)
    other = make_job(tmp_path, path, number="-2113737-11", SETOOLS_CONFIG_PATH=selection)
    setools(other)
    assert split_numbers(other) != split_numbers(first)


def test_seed_key_fixes_the_split_independently_of_the_run_seed(tmp_path, catalogue):
    path, _, _ = catalogue
    selection = selection_without_plots(tmp_path, extra="SEED = 12345\n")
    a = make_job(tmp_path, path, seed=1, SETOOLS_CONFIG_PATH=selection)
    b = make_job(tmp_path, path, seed=2, SETOOLS_CONFIG_PATH=selection)
    setools(a)
    setools(b)
    assert split_numbers(a) == split_numbers(b)


def test_too_few_stars_fails_the_job(tmp_path):
    columns, _ = synthetic_catalogue(np.random.default_rng(4), n_stars=8, n_galaxies=0)
    path = write_catalogue(tmp_path / f"sexcat{NUMBER}.fits", columns)
    job = make_job(tmp_path, path, MIN_N_STARS=10, SETOOLS_CONFIG_PATH=selection_without_plots(tmp_path))
    with pytest.raises(JobError) as info:
        setools(job)
    message = str(info.value)
    assert str(path) in message
    assert "[RAND_SPLIT:star_split]" in message and "MIN_N_STARS = 10" in message
    # STAR_MASK selects which mask is counted.
    job = make_job(tmp_path, path, MIN_N_STARS=3, STAR_MASK="flag",
                   SETOOLS_CONFIG_PATH=selection_without_plots(tmp_path))
    setools(job)


def test_missing_column_fails_with_file_and_line(tmp_path):
    columns, _ = synthetic_catalogue(np.random.default_rng(4))
    del columns["IMAFLAGS_ISO"]
    path = write_catalogue(tmp_path / f"sexcat{NUMBER}.fits", columns)
    with pytest.raises(JobError, match=r"sexcat-2113737-10.fits: .*no_plots.setools:13: no column 'IMAFLAGS_ISO'"):
        setools(make_job(tmp_path, path, SETOOLS_CONFIG_PATH=selection_without_plots(tmp_path)))


def test_new_cat_outputs(tmp_path, catalogue):
    path, columns, _ = catalogue
    selection = tmp_path / "new.setools"
    selection.write_text(
        "[MASK:bright]\nMAG_AUTO < 20\n"
        "[NEW_CAT:bright_ldac]\nOUTPUT_FORMAT = SEx_cat\nMAG = MAG_AUTO{bright}\nSIZE = FWHM_IMAGE{bright} * 0.187\n"
        "[NEW_CAT:summary]\nOUTPUT_FORMAT = txt\nN = len(MAG_AUTO{bright})\nMEDIAN = median(MAG_AUTO{bright})\n"
        "[NEW_CAT:plain]\nOUTPUT_FORMAT = fits\nIS_BRIGHT = MAG_AUTO < 20\n"
    )
    job = make_job(tmp_path, path, SETOOLS_CONFIG_PATH=str(selection), MIN_N_STARS=0)
    setools(job)
    bright = columns["MAG_AUTO"] < 20
    table, header = read_ldac(job.output_dir / f"new_cat/bright_ldac{NUMBER}.fits")
    np.testing.assert_array_equal(table["MAG"], columns["MAG_AUTO"][bright])
    np.testing.assert_allclose(table["SIZE"], columns["FWHM_IMAGE"][bright] * 0.187, rtol=1e-6)
    assert header["NAXIS1"] == 2048
    text = (job.output_dir / f"new_cat/summary{NUMBER}.txt").read_text().splitlines()
    assert text[0] == "# N MEDIAN"
    n, median = text[1].split()
    assert int(n) == bright.sum() and float(median) == pytest.approx(np.median(columns["MAG_AUTO"][bright]))
    with fits.open(job.output_dir / f"new_cat/plain{NUMBER}.fits") as hdus:
        np.testing.assert_array_equal(hdus["LDAC_OBJECTS"].data["IS_BRIGHT"], bright)
    # A mask without NO_SAVE is saved.
    saved, _ = read_ldac(job.output_dir / f"mask/bright{NUMBER}.fits")
    assert len(saved) == bright.sum()


def test_default_selection_against_truth(tmp_path):
    # Size scatter 0.15 pix: wider than ShapePipe's fixed +-0.2 pix window allows for.
    columns, is_star = synthetic_catalogue(
        np.random.default_rng(11), n_stars=300, n_galaxies=900, star_scatter=0.15
    )
    path = write_catalogue(tmp_path / f"sexcat{NUMBER}.fits", columns)
    job = make_job(tmp_path, path, SETOOLS_CONFIG_PATH=DEFAULT_SELECTION)
    setools(job)
    table, _ = read_ldac(job.output_dir / f"mask/star_selection{NUMBER}.fits")
    selected = np.isin(columns["NUMBER"], table["NUMBER"])
    mag = columns["MAG_AUTO"]
    clean = (columns["FLAGS"] == 0) & (columns["IMAFLAGS_ISO"] == 0)
    true_stars = is_star & (mag > 18) & (mag < 22) & clean
    completeness = (selected & true_stars).sum() / true_stars.sum()
    purity = (selected & is_star).sum() / selected.sum()
    assert completeness > 0.97, completeness
    assert purity > 0.97, purity
    # ShapePipe's fixed +-0.2 pixel window loses about a fifth of these stars.
    fwhm = columns["FWHM_IMAGE"]
    fixed = np.abs(fwhm - 3.7) <= 0.2
    assert (fixed & true_stars).sum() / true_stars.sum() < 0.9
    for name in ("size_mag", "hist_mag_stars", "fwhm_field", "mag_star_field"):
        assert (job.output_dir / f"plot/{name}{NUMBER}.png").exists()
    stat = read_stat(job.output_dir / f"stat/star_stat{NUMBER}.txt")
    assert stat["Locus width sigma_mad (arcsec)"] == pytest.approx(0.15 * 0.187, rel=0.2)


def test_stat_text_layout():
    assert stat_text([("Nb stars", 12), ("mean", 0.5)]) == "# Statistics\nNb stars = 12\nmean = 0.5\n"


def test_empty_catalogue_runs_without_crashing(tmp_path, caplog):
    columns, _ = synthetic_catalogue(np.random.default_rng(5), n_stars=0, n_galaxies=0)
    path = write_catalogue(tmp_path / f"sexcat{NUMBER}.fits", columns)
    job = make_job(tmp_path, path, MIN_N_STARS=0)
    with caplog.at_level(logging.WARNING, logger="test_setools"):
        summary = setools(job)
    assert summary["n_objects"] == 0 and summary["n_star_selection"] == 0
    assert "leaves an empty sub-sample" in caplog.text
    assert not (job.output_dir / "rand_split").exists()
    table, _ = read_ldac(job.output_dir / f"mask/star_selection{NUMBER}.fits")
    assert len(table) == 0
    stat = read_stat(job.output_dir / f"stat/star_stat{NUMBER}.txt")
    assert stat["Nb stars"] == 0
    assert np.isnan(stat["Mode fwhm used (arcsec)"])
    for name in ("size_mag", "hist_mag_stars", "fwhm_field"):
        assert (job.output_dir / f"plot/{name}{NUMBER}.png").read_bytes()[:4] == b"\x89PNG"


def test_catalogue_with_vignets_of_candidate_rows_gives_identical_outputs(tmp_path, catalogue):
    """VIGNET stored only for rows meeting the star mask's fixed cuts: same star catalogues, byte for byte."""
    from astropy.table import Table

    from shapepipe_modules.sextractor.columns import rows_meeting

    path, columns, _ = catalogue
    conditions = ["FLAGS == 0", "IMAFLAGS_ISO == 0", "MAG_AUTO > 18", "MAG_AUTO < 22"]
    table = Table(columns)
    rows = rows_meeting(table, conditions)
    assert rows.sum() < 0.8 * len(table)
    sparse = tmp_path / "sparse" / path.name
    sparse.parent.mkdir()
    write_ldac(sparse, table, image_header(), vignet_rows=rows, vignet_selection=", ".join(conditions))
    selection = selection_without_plots(tmp_path)
    dense_job = make_job(tmp_path, path, SETOOLS_CONFIG_PATH=selection)
    sparse_job = make_job(tmp_path, sparse, SETOOLS_CONFIG_PATH=selection)
    assert setools(dense_job) == setools(sparse_job)
    written = sorted(p.relative_to(dense_job.output_dir) for p in dense_job.output_dir.rglob("*.fits"))
    assert len(written) == 3
    for name in written:
        assert (dense_job.output_dir / name).read_bytes() == (sparse_job.output_dir / name).read_bytes(), name

    # Stamps kept for too few rows: the job stops rather than write unusable stamps.
    narrow = tmp_path / "narrow" / path.name
    narrow.parent.mkdir()
    write_ldac(narrow, table, image_header(), vignet_rows=rows & (table["MAG_AUTO"] < 20),
               vignet_selection="MAG_AUTO < 20")
    with pytest.raises(JobError, match="VIGNET_ROWS") as error:
        setools(make_job(tmp_path, narrow, SETOOLS_CONFIG_PATH=selection))
    assert "star_selection" in str(error.value) and "MAG_AUTO < 20" in str(error.value)


def test_histogram_plot_has_the_pixels_of_matplotlib_hist_bars(tmp_path):
    """A TYPE = hist plot (one filled step patch per series, written by io.figures.save_png) is the
    image matplotlib's own hist bars and savefig give for the same sections."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    from shapepipe_modules.setools.plots import make_plot

    path = tmp_path / "h.setools"
    path.write_text("[MASK:bright]\nMAG < 21\nNO_SAVE\n"
                    "[PLOT:h]\nTYPE = hist\nY_1 = MAG\nY_2 = MAG{bright}\nBIN_1 = 20\nBIN_2 = 12\nALPHA_2 = 0.5\n"
                    "LABEL_1 = all\nLABEL_2 = bright\nTITLE = \"Magnitudes\"\nXLABEL = Mag\n")
    selection = read_setools(path)
    rng = np.random.default_rng(5)
    columns = {"MAG": rng.normal(21.0, 1.2, 400)}
    masks = compute_masks(selection, columns, 400)
    written = make_plot(selection.plots["h"], columns, masks, tmp_path / "h", str(path))

    figure = Figure()
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    figure.suptitle("Magnitudes")
    axes.hist(columns["MAG"], bins=20, label="all")
    axes.hist(columns["MAG"][columns["MAG"] < 21], bins=12, alpha=0.5, label="bright")
    axes.legend()
    axes.set_xlabel("Mag")
    figure.savefig(tmp_path / "reference.png", format="png")

    ours = np.asarray(Image.open(written).convert("RGB"))
    reference = np.asarray(Image.open(tmp_path / "reference.png").convert("RGB"))
    assert ours.shape == reference.shape == (480, 640, 3)
    assert np.array_equal(ours, reference)
    assert Image.open(written).mode == "RGB"
