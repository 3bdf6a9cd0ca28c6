"""shapepipe_campaign run / final-cat / snakefile on a 4-tile campaign of overlapping tiles.

The stages are real ``shapepipe_run`` configurations: get_images brings the
tile's own input (its ``tile_list.txt`` names only that tile), then a small
module writes the tile's final catalogue from it. The inputs are detection
lists of a truth catalogue over four overlapping CFIS tiles (0.56 deg tiles,
0.5 deg apart), each object seen by every tile whose footprint holds it with
an independent position error: the final catalogue must hold each truth
object once, from the tile whose centre is nearest (computed here from the
truth). The full image chain on the simulated ``campaign`` preset is the slow
test in test_campaign_sim.py.
"""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from astropy.table import Table

from shapepipe_modules.cfis import tile_centre
from shapepipe_modules.tools.campaign import main as campaign
from shapepipe_modules.tools.final_cat import angular_distance

TILES = ["244.252", "245.252", "246.252", "247.252"]
HALF_SIZE = 0.28  # deg: tiles 0.56 deg across, centres 0.5 deg apart

MODULES = '''
from shapepipe.errors import JobError
from shapepipe.module import module


@module(name="t_final", version="0.1", file_pattern=("CFIS_image",), file_ext=".fits", numbering_scheme="-000-000")
def t_final(job):
    """The tile's detections as its final catalogue (HDU RESULTS)."""
    from shapepipe_modules.io.tables import read_fits_table, write_fits_table
    from shapepipe_modules.io.tables import FitsTableError

    try:
        table = read_fits_table(job.inputs[0])
    except FitsTableError as error:
        raise JobError(str(error)) from None
    write_fits_table(job.output_path(f"final_cat{job.number}.fits"), table, extname="RESULTS")
'''


def _config(folder, name, body):
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


def _truth_and_inputs(data, rng):
    """Truth objects over the four tiles and each tile's detections (CFIS.XXX.YYY.r.fits tables)."""
    ra0, dec0 = tile_centre(244, 252)
    ra3, _ = tile_centre(247, 252)
    n = 3000
    cos = np.cos(np.radians(dec0))
    ra = rng.uniform(ra0 - (HALF_SIZE + 0.02) / cos, ra3 + (HALF_SIZE + 0.02) / cos, n)
    dec = rng.uniform(dec0 - HALF_SIZE + 0.01, dec0 + HALF_SIZE - 0.01, n)
    truth = Table({"id": np.arange(1, n + 1), "ra": ra, "dec": dec})
    (data / "tiles").mkdir(parents=True)
    seen = {}
    for tile in TILES:
        xxx, yyy = map(int, tile.split("."))
        rc, dc = tile_centre(xxx, yyy)
        inside = (np.abs((ra - rc) * np.cos(np.radians(dc))) < HALF_SIZE) & (np.abs(dec - dc) < HALF_SIZE)
        ids = truth["id"][inside]
        error = rng.normal(0, 0.05 / 3600, (2, ids.size))  # 0.05 arcsec per tile and object
        table = Table({"NUMBER": np.arange(1, ids.size + 1), "XWIN_WORLD": ra[inside] + error[0] / np.cos(np.radians(dc)),
                       "YWIN_WORLD": dec[inside] + error[1], "TRUTH_ID": ids})
        table.write(data / "tiles" / f"CFIS.{tile}.r.fits", format="fits")
        seen[tile] = set(ids.tolist())
    (data / "tile_list.txt").write_text("\n".join(TILES) + "\n")
    return truth, seen


@pytest.fixture
def toy_campaign(tmp_path):
    data = tmp_path / "data"
    truth, seen = _truth_and_inputs(data, np.random.default_rng(5))
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "modules").mkdir()
    (configs / "modules" / "toy_final.py").write_text(MODULES)
    _config(configs, "config_get.ini", """\
        [DEFAULT]
        VERBOSE = False
        RUN_NAME = run_get
        RUN_DATETIME = True
        [EXECUTION]
        MODULE = get_images_runner
        [FILE]
        INPUT_DIR = $SP_DATA
        OUTPUT_DIR = $SP_RUN/output
        [GET_IMAGES_RUNNER]
        FILE_PATTERN = tile_list
        FILE_EXT = .txt
        NUMBERING_SCHEME =
        INPUT_PATH = $SP_DATA/tiles
        INPUT_FILE_PATTERN = CFIS.000.000.r
        INPUT_FILE_EXT = .fits
        INPUT_NUMBERING = \\d{3}\\.\\d{3}
        OUTPUT_FILE_PATTERN = CFIS_image-
        RETRIEVE = symlink
        """)
    _config(configs, "config_final.ini", f"""\
        [DEFAULT]
        VERBOSE = False
        RUN_NAME = run_final
        RUN_DATETIME = True
        [EXECUTION]
        MODULE = t_final
        MODULE_DIR = {configs / 'modules'}
        [FILE]
        INPUT_DIR = last:get_images_runner
        OUTPUT_DIR = $SP_RUN/output
        """)
    (tmp_path / "tiles.txt").write_text("\n".join(TILES) + "\n")
    options = ["--root", str(tmp_path / "campaign"), "--data", str(data), "--config-dir", str(configs),
               "--stages", "Get=config_get.ini, Final=config_final.ini"]
    return tmp_path, truth, seen, options


def _nearest_tile(ra, dec):
    """Index in TILES of the tile whose centre is nearest, from the truth positions, and the margin (deg)
    to the second nearest (below the position errors the measured positions may choose either)."""
    distances = np.sort(np.array([angular_distance(ra, dec, *tile_centre(*map(int, t.split(".")))) for t in TILES]),
                        axis=0)
    order = np.argmin(np.array([angular_distance(ra, dec, *tile_centre(*map(int, t.split(".")))) for t in TILES]),
                      axis=0)
    return order, distances[1] - distances[0]


def _check_final(path, truth, seen, expected_tiles=TILES):
    final = Table.read(path, hdu="RESULTS")
    ids = np.asarray(final["TRUTH_ID"])
    assert ids.size == np.unique(ids).size, "an object is in the final catalogue twice"
    expected = set().union(*(seen[t] for t in expected_tiles))
    assert set(ids.tolist()) == expected  # none lost
    rows = np.searchsorted(truth["id"], ids)
    index, margin = _nearest_tile(truth["ra"][rows], truth["dec"][rows])
    nearest = np.array(TILES)[index]
    from_tile = np.asarray(final["TILE"]).astype(str)
    in_list = np.isin(nearest, expected_tiles) & (margin > 1.0 / 3600)
    # Each object comes from the tile whose centre is nearest (when that tile is in the catalogue).
    np.testing.assert_array_equal(from_tile[in_list], nearest[in_list])
    return final


def test_run_fail_rerun_and_final_catalogue(toy_campaign, capsys):
    folder, truth, seen, options = toy_campaign
    root = folder / "campaign"
    good = (folder / "data" / "tiles" / "CFIS.245.252.r.fits").read_bytes()
    (folder / "data" / "tiles" / "CFIS.245.252.r.fits").write_bytes(b"SIMPLE  = corrupted" + b" " * 100)
    assert campaign(["run", "--tiles", str(folder / "tiles.txt"), *options]) == 1
    err = capsys.readouterr().err
    assert "tile 245.252" in err and "CFIS_image-245-252.fits" in err
    assert sorted(p.name for p in (root / "tile_runs" / "245.252" / "stages").iterdir()) == ["Get.done"]
    # summary over the campaign root shows the failed tile at the Final stage.
    assert campaign(["summary", str(root), "--tiles", str(folder / "tiles.txt"), "--json"]) == 1
    rows = {r["stage"]: r for r in json.loads(capsys.readouterr().out)}
    assert (rows["t_final"]["done"], rows["t_final"]["failed"], rows["t_final"]["failed_ids"]) == (3, 1, ["245.252"])
    missing = folder / "missing.txt"
    assert campaign(["missing", str(root), "--tiles", str(folder / "tiles.txt"), "--stage", "t_final",
                     "-o", str(missing)]) == 1
    assert missing.read_text() == "245.252\n"
    # A final catalogue of the three tiles done: the failed tile is named, nothing doubled.
    assert campaign(["final-cat", "--tiles", str(folder / "tiles.txt"), "-o", str(folder / "partial.fits"),
                     *options[:2], "--module-run", "t_final"]) == 1
    assert "tiles without a final catalogue: 245.252" in capsys.readouterr().err
    _check_final(folder / "partial.fits", truth, seen, ["244.252", "246.252", "247.252"])
    # Repair the input and re-run the missing list: only that tile runs, from its failed stage.
    (folder / "data" / "tiles" / "CFIS.245.252.r.fits").write_bytes(good)
    before = {t: sorted(p.name for p in (root / "tile_runs" / t / "output").iterdir()) for t in TILES}
    assert campaign(["run", "--tiles", str(missing), *options]) == 0
    after = {t: sorted(p.name for p in (root / "tile_runs" / t / "output").iterdir()) for t in TILES}
    assert {t for t in TILES if after[t] != before[t]} == {"245.252"}
    assert len(after["245.252"]) == len(before["245.252"]) + 1  # the Final stage only
    assert campaign(["summary", str(root), "--tiles", str(folder / "tiles.txt")]) == 0
    capsys.readouterr()
    assert campaign(["final-cat", "--tiles", str(folder / "tiles.txt"), "-o", str(folder / "final.fits"),
                     *options[:2], "--module-run", "t_final"]) == 0
    out = capsys.readouterr().out
    final = _check_final(folder / "final.fits", truth, seen)
    n_rows = sum(len(s) for s in seen.values())
    removed = n_rows - len(final)
    assert removed == sum(len(seen[a] & seen[b]) for a, b in zip(TILES, TILES[1:])) > 100
    assert f"{removed} duplicate(s) removed" in out


def test_match_radius_groups_only_across_tiles():
    from shapepipe_modules.tools.final_cat import duplicate_groups

    ra = np.array([10.0, 10.0 + 0.5 / 3600, 10.0 + 0.2 / 3600, 11.0])
    dec = np.array([20.0, 20.0, 20.0, 20.0])
    tile = np.array([0, 0, 1, 1])
    groups = duplicate_groups(ra, dec, tile, 1.0)
    assert [g.tolist() for g in groups] == [[0, 1, 2]]  # 0 and 1 linked through tile 1's detection
    assert duplicate_groups(ra, dec, np.zeros(4, int), 1.0) == []


def test_bad_stage_and_tile_are_named(toy_campaign, capsys):
    folder, _, _, options = toy_campaign
    assert campaign(["run", "244.252", *options, "--from", "Nope"]) == 2
    assert "no stage 'Nope'" in capsys.readouterr().err
    assert campaign(["run", "not.a.tile", *options]) == 2
    assert campaign(["run", "244.252", *options[:-1], "Get"]) == 2
    assert "is not NAME=CONFIG_FILE" in capsys.readouterr().err


def test_snakemake_workflow_fails_one_tile_and_resumes(toy_campaign, capsys):
    snakemake = shutil.which("snakemake") or shutil.which("snakemake", path=str(__import__("pathlib").Path(
        sys.executable).parent))
    if snakemake is None:
        pytest.skip("snakemake not installed (pip install shapepipe[workflow])")
    folder, truth, seen, options = toy_campaign
    root = folder / "campaign"
    assert campaign(["snakefile", "--tiles", str(folder / "tiles.txt"), *options, "--module-run", "t_final"]) == 0
    snakefile = root / "Snakefile"
    text = snakefile.read_text()
    assert "rule stage_Get:" in text and "rule stage_Final:" in text and "rule final_cat:" in text
    image = folder / "data" / "tiles" / "CFIS.246.252.r.fits"
    good = image.read_bytes()
    image.write_bytes(b"not FITS at all")
    command = [snakemake, "-s", str(snakefile), "-d", str(root), "--cores", "2", "--keep-going", "--quiet"]
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode != 0
    markers = sorted(p.relative_to(root / "tile_runs").as_posix() for p in root.glob("tile_runs/*/stages/*.done"))
    assert markers == sorted([f"{t}/stages/Get.done" for t in TILES] + [f"{t}/stages/Final.done" for t in TILES
                                                                       if t != "246.252"])
    assert not (root / "final_cat.fits").exists()
    assert "CFIS_image-246-252.fits" in (root / "tile_runs" / "246.252" / "logs" / "Final.log").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in root.glob("tile_runs/*/stages/*.done")}
    image.write_bytes(good)
    second = subprocess.run(command, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    # Snakemake's bookkeeping: the done jobs are not run again.
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert (root / "tile_runs" / "246.252" / "stages" / "Final.done").is_file()
    _check_final(root / "final_cat.fits", truth, seen)


def test_campaign_preset_is_tiny_enlarged_with_overlapping_tiles():
    """Neighbouring tiles of the campaign preset overlap by ~200 arcsec, each covered by its own exposures, and
    the scene has tiny's sampling: PSF and galaxy sizes in pixels, objects per pixel."""
    from shapepipe_modules.simulate.presets import preset_parameters

    campaign_params, tiny = preset_parameters("campaign"), preset_parameters("tiny")
    scale = campaign_params["pixel_scale"] / tiny["pixel_scale"]
    width = campaign_params["tile_size"] * campaign_params["pixel_scale"] / 3600
    centres = [tile_centre(*map(int, t.split("."))) for t in campaign_params["tiles"]]
    gaps = [angular_distance(*a, *b) for a, b in zip(centres, centres[1:])]
    assert len(centres) == 4 and all(abs(width - g - 200 / 3600) < 10 / 3600 for g in gaps)
    mosaic = (2 * campaign_params["ccd_nx"] + campaign_params["gap_x"]) * campaign_params["pixel_scale"]
    assert mosaic > width * 3600 + 2 * 1.2 * campaign_params["dither_arcsec"]  # the dithered pattern covers it
    np.testing.assert_allclose(np.array(campaign_params["psf_fwhm_range"]) / scale, tiny["psf_fwhm_range"], rtol=0.07)
    np.testing.assert_allclose(campaign_params["hlr_at_22"] / scale, tiny["hlr_at_22"], rtol=0.03)
    for name in ("star_density", "galaxy_density"):
        np.testing.assert_allclose(campaign_params[name] * scale**2, tiny[name], rtol=0.03)
    np.testing.assert_allclose(campaign_params["sky_mag"] - 5 * np.log10(scale), tiny["sky_mag"], atol=0.05)


def test_final_cat_names_a_bad_tile_catalogue(toy_campaign, capsys):
    folder, _, _, options = toy_campaign
    assert campaign(["run", "244.252", "245.252", *options]) == 0
    capsys.readouterr()
    bad = next((folder / "campaign" / "tile_runs" / "245.252" / "output").glob("run_final_*/t_final/output/*.fits"))
    from astropy.table import Table as T

    T({"NUMBER": [1], "RA": [1.0], "DEC": [2.0]}).write(bad, overwrite=True)
    (folder / "two.txt").write_text("244.252\n245.252\n")
    final_options = ["--tiles", str(folder / "two.txt"), "-o", str(folder / "f.fits"), *options[:2], "--module-run",
                     "t_final"]
    assert campaign(["final-cat", *final_options]) == 2
    assert "tile 245.252: final catalogue has no column 'XWIN_WORLD'" in capsys.readouterr().err
    bad.write_bytes(b"garbage")
    assert campaign(["final-cat", *final_options]) == 2
    assert str(bad) in capsys.readouterr().err
