"""Synthetic tile inputs of the ngmix stage (imported by the ngmix, merge_sep_cats
and make_catalog tests): galsim galaxies with a known shear in 1-3 epochs."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shapepipe_modules.io.header_store import HeaderStore
from shapepipe_modules.io.stamp_store import StampStore, epoch_key
from shapepipe_modules.io.tables import write_fits_table

STAMP = 41
NUMBER = "-244-252"
EXPOSURES = ("2100001", "2100002", "2100003")
N_CCD = 40


@dataclass
class SyntheticTile:
    directory: Path
    ids: np.ndarray
    shear: tuple
    inputs: list = field(default_factory=list)  # ngmix inputs, FILE_PATTERN order
    header_store: Path = None
    sm_path: Path = None
    psf_path: Path = None
    epochs: dict = field(default_factory=dict)  # id -> list of epoch keys
    flux_scales: dict = field(default_factory=dict)  # exposure -> FSCALE


def make_tile(directory, ids=(3, 5, 6, 9, 10, 12, 17, 21), shear=(0.04, -0.02), seed=7, masked_ids=(),
              no_epoch_ids=(), noise=0.8, write_psf=True, e_sigma=0.2, flux_scales=None):
    """Write a tile catalogue, the five stamp stores, a header store and a spread-model file."""
    import galsim
    from astropy.io import fits

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = np.asarray(ids, dtype=np.int64)
    tile = SyntheticTile(directory, ids, tuple(shear))
    tile.flux_scales = flux_scales or {exp: 1.0 + 0.25 * k for k, exp in enumerate(EXPOSURES)}
    with HeaderStore(directory / "log_exp_headers.sqlite", mode="w") as headers:
        for exposure in EXPOSURES:
            cards = []
            for _ in range(N_CCD):
                header = fits.Header()
                header["FSCALE"] = tile.flux_scales[exposure]
                cards.append(header)
            headers.write_exposure(exposure, cards)
    tile.header_store = directory / "log_exp_headers.sqlite"

    kinds = ("image", "background", "weight", "flag")
    paths = {kind: directory / f"{kind}_vignet{NUMBER}.sqlite" for kind in kinds}
    stores = {kind: StampStore(path, mode="w") for kind, path in paths.items()}
    tile.psf_path = directory / f"galaxy_psf{NUMBER}.sqlite"
    psf_store = StampStore(tile.psf_path, mode="w")
    tile_vignets = np.zeros((ids.size, STAMP, STAMP), dtype=np.float32)
    for row, object_id in enumerate(ids.tolist()):
        if object_id in no_epoch_ids:
            for store in (*stores.values(), psf_store):
                store.mark_no_epoch(object_id, "not on any exposure")
            tile.epochs[object_id] = []
            continue
        n_epochs = 1 + object_id % 3
        e_int = rng.normal(0.0, e_sigma, 2)
        galaxy = (galsim.Exponential(half_light_radius=rng.uniform(0.4, 0.7), flux=rng.uniform(1500, 3000))
                  .shear(g1=e_int[0], g2=e_int[1]).shear(g1=shear[0], g2=shear[1]))
        tile.epochs[object_id] = []
        for k in range(n_epochs):
            exposure = EXPOSURES[k]
            ccd = (object_id + 7 * k) % N_CCD
            key = epoch_key(exposure, ccd)
            tile.epochs[object_id].append(key)
            jac = np.array([[0.186 + 0.002 * k, 0.003 * k], [-0.002 * k, 0.187]])
            if k == 1:
                jac = jac[:, ::-1] * np.array([1.0, -1.0])  # another CCD orientation
            wcs = galsim.JacobianWCS(*jac.ravel())
            psf = galsim.Moffat(beta=3.0, fwhm=0.65 + 0.05 * k).shear(g1=0.02, g2=-0.01 * k)
            offset = rng.uniform(-0.5, 0.5, 2)
            scale = tile.flux_scales[exposure]
            image = galsim.Convolve(galaxy, psf).drawImage(nx=STAMP, ny=STAMP, wcs=wcs, offset=offset).array
            image = (image + rng.normal(0.0, noise, image.shape)) / scale
            background = np.full((STAMP, STAMP), 20.0 + 3 * k)
            flag = np.zeros((STAMP, STAMP), dtype=np.int16)
            if object_id in masked_ids:
                flag[:] = 4
            weight = np.full((STAMP, STAMP), scale ** 2 / noise ** 2, dtype=np.float32)
            meta = {"CENTRE_ROW": STAMP // 2 + offset[1], "CENTRE_COL": STAMP // 2 + offset[0],
                    "MASKED_FRACTION": float(np.mean(flag != 0))}
            stores["image"].put(object_id, key, {"VIGNET": (image + background).astype(np.float32),
                                                 "JACOBIAN": jac}, meta)
            stores["background"].put(object_id, key, {"VIGNET": background.astype(np.float32)}, meta)
            stores["weight"].put(object_id, key, {"VIGNET": weight}, meta)
            stores["flag"].put(object_id, key, {"VIGNET": flag}, meta)
            psf_image = psf.drawImage(nx=STAMP, ny=STAMP, wcs=wcs).array.astype(np.float32)
            psf_meta = {"E1_PSF_HSM": 0.02 + 0.001 * k, "E2_PSF_HSM": -0.01 * k, "SIGMA_PSF_HSM": 1.7 + 0.1 * k,
                        "FLAG_PSF_HSM": 0, "X": 100.0, "Y": 200.0, "DX": 0.0, "DY": 0.0}
            psf_store.put(object_id, key, {"VIGNET": psf_image}, psf_meta)
    for store in (*stores.values(), psf_store):
        store.close()
    if not write_psf:
        tile.psf_path.unlink()

    n = ids.size
    tile_path = directory / f"sexcat{NUMBER}.fits"
    write_fits_table(tile_path, {
        "NUMBER": ids.astype(np.int32),
        "XWIN_WORLD": 244.0 + 0.001 * np.arange(n), "YWIN_WORLD": 52.0 + 0.001 * np.arange(n),
        "MAG_AUTO": rng.uniform(20, 24, n).astype(np.float32), "FLAGS": np.zeros(n, np.int16),
        "VIGNET": tile_vignets,
    }, extname="LDAC_OBJECTS")
    tile.sm_path = directory / f"sexcat_sm{NUMBER}.fits"
    order = rng.permutation(n)  # the spread-model rows need not follow the tile order
    sm = rng.normal(0.005, 0.01, n)
    write_fits_table(tile.sm_path, {"NUMBER": ids[order].astype(np.int32), "SPREAD_MODEL": sm[order],
                                    "SPREADERR_MODEL": np.full(n, 0.001), "SPREAD_FLAGS": np.zeros(n, np.int16)},
                     extname="LDAC_OBJECTS")
    tile.inputs = [tile_path, paths["image"], paths["background"], tile.psf_path, paths["weight"], paths["flag"]]
    return tile
