"""The PSF of every tile object, combined over its epochs, from a PSF stamp store.

The store is written by ``psfinterp`` MULTI-EPOCH (ShapePipe's
``galaxy_psf<number>.sqlite``): a :class:`StampStore` keyed by object id and
epoch, each epoch holding the PSF stamp as ``VIGNET`` and the HSM shape as
meta (``SIGMA_PSF_HSM`` in pixels, ``FLAG_PSF_HSM``).

Combination: the PSF sigma is the mean of the epochs' HSM sigmas (as
ShapePipe), over epochs whose HSM flag is 0 and sigma finite and positive;
the PSF stamp is the mean of the epochs' stamps, each normalised to unit
sum. An epoch without ``SIGMA_PSF_HSM`` gets the HSM sigma of its stamp
(GalSim's adaptive moments). Objects absent from the store, recorded as
having no epoch, or with no usable epoch have no PSF.
"""

from __future__ import annotations

import numpy as np


def _hsm_sigma(stamp) -> float:
    import galsim

    try:
        moments = galsim.hsm.FindAdaptiveMom(galsim.Image(np.asarray(stamp, float)), strict=False)
    except galsim.errors.GalSimError:
        return np.nan
    if moments.moments_status != 0:
        return np.nan
    return float(moments.moments_sigma)


def combine_epochs(record, want_stamps: bool):
    """Combined PSF sigma and stamp of one object.

    Parameters
    ----------
    record : ObjectRecord
        The object's epochs in the PSF store.
    want_stamps : bool
        Also combine the stamps.

    Returns
    -------
    sigma : float
        NaN when no epoch is usable.
    stamp : numpy.ndarray or None
    """
    sigmas, stamps = [], []
    for epoch in record.values():
        stamp = epoch.arrays.get("VIGNET")
        if "SIGMA_PSF_HSM" in epoch.meta:
            sigma = float(epoch.meta["SIGMA_PSF_HSM"])
            if int(epoch.meta.get("FLAG_PSF_HSM", 0) or 0) != 0:
                sigma = np.nan
        elif stamp is not None:
            sigma = _hsm_sigma(stamp)
        else:
            sigma = np.nan
        if not (np.isfinite(sigma) and sigma > 0):
            continue
        if want_stamps:
            if stamp is None:
                continue
            total = float(np.sum(stamp))
            if not (np.isfinite(total) and total > 0):
                continue
            stamps.append(np.asarray(stamp, float) / total)
        sigmas.append(sigma)
    if not sigmas:
        return np.nan, None
    stamp = None
    if want_stamps:
        shapes = {s.shape for s in stamps}
        if len(shapes) != 1:
            raise ValueError(f"PSF stamps of one object have different shapes {sorted(shapes)}")
        stamp = np.mean(stamps, axis=0)
    return float(np.mean(sigmas)), stamp


def read_object_psfs(store, object_ids, want_stamps: bool = False):
    """Combined PSFs of objects.

    Parameters
    ----------
    store : StampStore
        The PSF store.
    object_ids : array_like of int
    want_stamps : bool

    Returns
    -------
    sigma : numpy.ndarray
        ``(n,)``; NaN for objects without PSF.
    stamps : numpy.ndarray or None
        ``(n, m, m)`` with zeros for objects without PSF (when ``want_stamps``).
    """
    ids = np.asarray(object_ids)
    sigma = np.full(ids.size, np.nan)
    stamps = None
    for k, object_id in enumerate(ids):
        try:
            record = store.get(int(object_id))
        except KeyError:
            continue
        if record.reason is not None:
            continue
        value, stamp = combine_epochs(record, want_stamps)
        sigma[k] = value
        if stamp is not None:
            if stamps is None:
                stamps = np.zeros((ids.size, *stamp.shape))
            elif stamp.shape != stamps.shape[1:]:
                raise ValueError(f"PSF stamp of object {object_id} has shape {stamp.shape}, others "
                                 f"{stamps.shape[1:]}")
            stamps[k] = stamp
    return sigma, stamps
