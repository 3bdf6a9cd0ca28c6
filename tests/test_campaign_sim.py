"""The GOLD chain as a 4-tile campaign on the simulated ``campaign`` preset (overlapping tiles), against truth.

One tile's image is corrupt: that tile stops at its first stage, the summary
shows it, the missing list names it, and once repaired only it runs again.
The final catalogue holds no true object twice across the tile overlaps and
loses none. The same path on small inputs is tested by default
(test_campaign_run.py); this is the image chain, slow.
"""

import json
from pathlib import Path

import pytest
from astropy.table import Table

from shapepipe_modules.tools.campaign import main as campaign

simulate = pytest.importorskip("shapepipe_modules.simulate")
GOLD = Path(__file__).resolve().parents[1] / "example" / "GOLD"


@pytest.mark.slow
def test_four_tile_campaign_with_a_failed_tile(tmp_path, capsys):
    from shapepipe_modules.gold.truth_checks import overlap_duplicates

    sim = tmp_path / "sim"
    simulate.simulate(preset="campaign", output_dir=sim, seed=1, n_workers=2)
    tiles = json.loads((sim / "simulation.json").read_text())["parameters"]["tiles"]
    assert len(tiles) == 4
    tile_list = tmp_path / "tiles.txt"
    tile_list.write_text("\n".join(tiles) + "\n")
    root = tmp_path / "root"
    common = ["--root", str(root), "--data", str(sim), "--config-dir", str(GOLD)]
    image = sim / "tiles" / "CFIS.245.252.r.fits"
    good = image.read_bytes()
    image.write_bytes(bytes(2880) + good[2880:])
    assert campaign(["run", "--tiles", str(tile_list), *common]) == 1
    assert "tile 245.252" in capsys.readouterr().err
    assert campaign(["summary", str(root), "--tiles", str(tile_list), "--json"]) == 1
    rows = {r["stage"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["find_exposures"]["failed_ids"] == ["245.252"]
    assert (rows["make_catalog"]["done"], rows["make_catalog"]["not_done_ids"]) == (3, ["245.252"])
    missing = tmp_path / "missing.txt"
    assert campaign(["missing", str(root), "--tiles", str(tile_list), "--stage", "make_catalog", "-o",
                     str(missing)]) == 1
    image.write_bytes(good)
    runs = {t: len(list((root / "tile_runs" / t / "output").glob("*/run.json"))) for t in tiles}
    assert campaign(["run", "--tiles", str(missing), *common]) == 0
    after = {t: len(list((root / "tile_runs" / t / "output").glob("*/run.json"))) for t in tiles}
    assert {t for t in tiles if after[t] != runs[t]} == {"245.252"}
    capsys.readouterr()
    final, joined = tmp_path / "final.fits", tmp_path / "joined.fits"
    # 2 pixels: one object's positions in two tiles differ by up to ~2 arcsec (2 arcsec pixels).
    radius = ["--match-radius", "4"]
    assert campaign(["final-cat", "--root", str(root), "--tiles", str(tile_list), "-o", str(final), *radius]) == 0
    assert campaign(["final-cat", "--root", str(root), "--tiles", str(tile_list), "-o", str(joined),
                     "--keep-duplicates", *radius]) == 0
    check = overlap_duplicates(Table.read(joined, hdu="RESULTS"), Table.read(final, hdu="RESULTS"), sim / "truth")
    assert check["truth_in_several_tiles"] > 20  # the overlaps are real
    assert check["final_in_several_tiles"] == 0
    assert check["lost"] == 0
    assert check["removed"] >= check["truth_in_several_tiles"]
