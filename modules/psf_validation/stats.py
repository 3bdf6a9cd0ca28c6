"""PSF validation numbers: star selection, residual summaries and rho statistics.

Sizes are ``T = 2 sigma**2`` (pixels squared) from HSM's ``moments_sigma``
(ShapePipe's ``R2``); ellipticities are HSM's observed shapes.

Rho statistics (Rowe 2010; Jarvis et al. 2016), with ``p`` the PSF model
ellipticity, ``q = e_star - e_model`` and ``w = p (T_star - T_model) /
T_model``::

    rho0 = <p p>   rho1 = <q q>   rho2 = <p q>
    rho3 = <w w>   rho4 = <q w>   rho5 = <p w>

each the shear-shear correlation ``xi+`` (and ``xi-``) measured with
treecorr on the sky.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RHO_NAMES = ("rho0", "rho1", "rho2", "rho3", "rho4", "rho5")


@dataclass
class StarSample:
    """Validation stars kept for the plots and statistics, and why others were cut."""

    ra: np.ndarray
    dec: np.ndarray
    x: np.ndarray
    y: np.ndarray
    ccd: np.ndarray
    exposure: np.ndarray
    e1_star: np.ndarray
    e2_star: np.ndarray
    size_star: np.ndarray
    e1_psf: np.ndarray
    e2_psf: np.ndarray
    size_psf: np.ndarray
    counts: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.ra)

    @property
    def de1(self):
        """Star minus model e1."""
        return self.e1_star - self.e1_psf

    @property
    def de2(self):
        """Star minus model e2."""
        return self.e2_star - self.e2_psf

    @property
    def dsize(self):
        """Relative size residual ``(T_star - T_model) / T_star``."""
        return (self.size_star - self.size_psf) / self.size_star


def select_stars(table, reserved_only: bool = True, remove_outliers: bool = False, outlier_sigma: float = 5.0):
    """Stars usable for validation from a merged star catalogue.

    Kept: rows whose PSF model was not rejected (``PSF_FLAG == 0``), HSM
    succeeded on star and model, sizes are finite and not degenerate (T
    above 0.1 pixel^2, ShapePipe's cut) and, with ``reserved_only``, the
    star was not used by the PSF fit (``ACCEPTED == 0``): only reserved
    stars then validate the model.

    Returns
    -------
    StarSample
        With ``counts`` saying how many rows each cut removed.
    """
    n = len(table)

    def column(name, default=None):
        if name in table.colnames:
            values = table[name]
            return np.asarray(values.filled(np.nan) if hasattr(values, "filled") else values)
        if default is None:
            raise KeyError(name)
        return np.full(n, default)

    size_star = 2.0 * column("SIGMA_STAR_HSM").astype(float) ** 2
    size_psf = 2.0 * column("SIGMA_PSF_HSM").astype(float) ** 2
    values = {name: column(name).astype(float) for name in
              ("E1_STAR_HSM", "E2_STAR_HSM", "E1_PSF_HSM", "E2_PSF_HSM", "RA", "DEC", "X", "Y")}
    counts = {"rows": n}
    keep = np.ones(n, dtype=bool)
    cuts = [
        ("model_rejected", column("PSF_FLAG", 0).astype(int) != 0),
        ("used_in_fit", (column("ACCEPTED", 0).astype(int) != 0) if reserved_only else np.zeros(n, bool)),
        ("hsm_failed", (column("FLAG_STAR_HSM").astype(int) != 0) | (column("FLAG_PSF_HSM").astype(int) != 0)),
        ("bad_values", ~np.all([np.isfinite(v) for v in (size_star, size_psf, *values.values())], axis=0)
         | (size_star < 0.1) | (size_psf < 0.1)),
    ]
    for name, bad in cuts:
        counts[name] = int((keep & bad).sum())
        keep &= ~bad
    if remove_outliers and keep.any():
        limit = np.mean(size_star[keep]) + outlier_sigma * np.std(size_star[keep])
        bad = size_star > limit
        counts["size_outliers"] = int((keep & bad).sum())
        keep &= ~bad
    counts["kept"] = int(keep.sum())
    return StarSample(
        ra=values["RA"][keep], dec=values["DEC"][keep], x=values["X"][keep], y=values["Y"][keep],
        ccd=column("CCD_NB", -1).astype(int)[keep], exposure=column("EXP_NAME", "").astype(str)[keep],
        e1_star=values["E1_STAR_HSM"][keep], e2_star=values["E2_STAR_HSM"][keep], size_star=size_star[keep],
        e1_psf=values["E1_PSF_HSM"][keep], e2_psf=values["E2_PSF_HSM"][keep], size_psf=size_psf[keep],
        counts=counts,
    )


def summary(sample: StarSample) -> dict:
    """Mean, standard deviation and RMS of stars, model and residuals."""
    def describe(values):
        values = np.asarray(values, dtype=float)
        if values.size == 0:
            return {"mean": float("nan"), "std": float("nan"), "rms": float("nan")}
        return {"mean": float(values.mean()), "std": float(values.std()), "rms": float(np.sqrt((values ** 2).mean()))}

    return {
        "n_stars": len(sample),
        "n_exposures": int(len(set(sample.exposure.tolist()))),
        "n_ccds": int(len(set(zip(sample.exposure.tolist(), sample.ccd.tolist())))),
        "e1_star": describe(sample.e1_star), "e1_psf": describe(sample.e1_psf), "e1_residual": describe(sample.de1),
        "e2_star": describe(sample.e2_star), "e2_psf": describe(sample.e2_psf), "e2_residual": describe(sample.de2),
        "size_star": describe(sample.size_star), "size_psf": describe(sample.size_psf),
        "size_relative_residual": describe(sample.dsize),
    }


def rho_fields(sample: StarSample) -> dict:
    """The complex fields correlated by the rho statistics: ``p``, ``q`` and ``w``."""
    p = sample.e1_psf + 1j * sample.e2_psf
    q = sample.de1 + 1j * sample.de2
    w = p * (sample.size_star - sample.size_psf) / sample.size_psf
    return {"p": p, "q": q, "w": w}


RHO_PAIRS = {"rho0": ("p", "p"), "rho1": ("q", "q"), "rho2": ("p", "q"),
             "rho3": ("w", "w"), "rho4": ("q", "w"), "rho5": ("p", "w")}


def rho_statistics(sample: StarSample, min_sep: float = 0.1, max_sep: float = 100.0, nbins: int = 20,
                   bin_slop: float = 0.1) -> dict:
    """Rho statistics rho0 to rho5 with treecorr.

    Parameters
    ----------
    sample : StarSample
    min_sep, max_sep : float
        Separation range in arcmin (log bins).
    nbins : int
    bin_slop : float
        treecorr's binning tolerance (0: every pair in its exact bin).

    Returns
    -------
    dict
        ``{name: {"theta", "xip", "xim", "sigma_xip", "npairs"}}``, arrays
        per separation bin (``theta`` is the mean pair separation in arcmin,
        or the bin centre for empty bins).
    """
    import treecorr

    fields = rho_fields(sample)
    config = dict(min_sep=min_sep, max_sep=max_sep, nbins=nbins, sep_units="arcmin", bin_slop=bin_slop,
                  metric="Arc")
    catalogues = {
        name: treecorr.Catalog(ra=sample.ra, dec=sample.dec, g1=value.real, g2=value.imag, ra_units="deg",
                               dec_units="deg")
        for name, value in fields.items()
    }
    results = {}
    for name, (first, second) in RHO_PAIRS.items():
        correlation = treecorr.GGCorrelation(**config)
        if first == second:
            correlation.process(catalogues[first])
        else:
            correlation.process(catalogues[first], catalogues[second])
        theta = np.where(correlation.npairs > 0, correlation.meanr, np.exp(correlation.logr))
        results[name] = {"theta": theta, "xip": correlation.xip.copy(), "xim": correlation.xim.copy(),
                         "sigma_xip": np.sqrt(correlation.varxip), "npairs": correlation.npairs.copy()}
    return results


def rho_table(rho: dict):
    """The rho statistics as one astropy Table (one row per separation bin)."""
    from astropy.table import Table

    table = Table()
    first = next(iter(rho.values()))
    table["THETA"] = first["theta"]
    table["THETA"].unit = "arcmin"
    for name, values in rho.items():
        upper = name.upper()
        table[f"{upper}_XIP"] = values["xip"]
        table[f"{upper}_XIM"] = values["xim"]
        table[f"{upper}_SIGMA"] = values["sigma_xip"]
        table[f"{upper}_NPAIRS"] = values["npairs"]
    return table


def rho_summary(rho: dict) -> dict:
    """Per rho: the largest |xi+| over bins with pairs, and its separation."""
    out = {}
    for name, values in rho.items():
        filled = values["npairs"] > 0
        if not filled.any():
            out[name] = {"max_abs_xip": float("nan"), "theta_arcmin": float("nan")}
            continue
        index = np.flatnonzero(filled)[np.argmax(np.abs(values["xip"][filled]))]
        out[name] = {"max_abs_xip": float(abs(values["xip"][index])), "theta_arcmin": float(values["theta"][index])}
    return out
