"""Acceptance (issue 8, tools) on the simulated ``tiny`` survey.

``cfis_field_select --tile`` (exposures from HISTORY) and ``create_star_cat``
(the simulator's bright stars inside each footprint) are checked against the
simulator in tests/test_tools_cfis_field_select.py and
tests/test_tools_create_star_cat.py; here: ``--area`` on the simulator's
tiles returns exactly the tiles whose centres (read from each tile's own
WCS) fall in the area.
"""

from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from shapepipe_modules.tools import cfis_field_select as cfs


def tile_centres(sim_dir):
    """``{file name: (ra, dec)}`` of the central pixel of every simulated tile."""
    centres = {}
    for path in sorted((Path(sim_dir) / "tiles").glob("CFIS.*.r.fits")):
        header = fits.getheader(path, 0)
        ra, dec = WCS(header).all_pix2world([[(header["NAXIS1"] + 1) / 2, (header["NAXIS2"] + 1) / 2]], 1)[0]
        centres[path.name] = (float(ra), float(dec))
    return centres


def area_cases(centres, rng):
    """Areas ``(ra0, dec0, ra1, dec1)`` around, beside and between the tile centres, with the expected tiles."""
    cases = []
    for name, (ra, dec) in centres.items():
        cases.append(((ra - 0.01, dec - 0.01, ra + 0.01, dec + 0.01), [name]))
        cases.append(((ra + 0.01, dec - 0.01, ra + 0.05, dec + 0.01), []))
        cases.append(((ra - 0.01, dec + 0.005, ra + 0.01, dec + 0.02), []))
    ra = np.array([c[0] for c in centres.values()])
    dec = np.array([c[1] for c in centres.values()])
    for _ in range(20):
        ra0, ra1 = np.sort(rng.uniform(ra.min() - 0.6, ra.max() + 0.6, 2))
        dec0, dec1 = np.sort(rng.uniform(dec.min() - 0.6, dec.max() + 0.6, 2))
        inside = (ra >= ra0) & (ra <= ra1) & (dec >= dec0) & (dec <= dec1)
        cases.append(((ra0, dec0, ra1, dec1), sorted(np.array(list(centres))[inside])))
    return cases


def test_area_returns_the_tiles_whose_centres_are_inside(tiny_sim, capsys):
    centres = tile_centres(tiny_sim)
    assert centres
    cases = area_cases(centres, np.random.default_rng(4))
    assert any(expected for _, expected in cases) and any(not expected for _, expected in cases)
    for area, expected in cases:
        text = "_".join(f"{value:.6f}" for value in area)
        status = cfs.main(["-i", str(tiny_sim / "tiles"), "--area", text])
        found = sorted(capsys.readouterr().out.split())
        assert found == expected, (area, found)
        assert status == (0 if expected else 1)
