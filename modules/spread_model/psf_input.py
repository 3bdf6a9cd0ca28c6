"""The PSF of every tile object, combined over its epochs, from a PSF stamp store.

The store is written by ``psfinterp`` MULTI-EPOCH (ShapePipe's
``galaxy_psf<number>.sqlite``): a :class:`StampStore` keyed by object id and
epoch, each epoch holding the PSF stamp as ``VIGNET`` and the HSM shape as
meta (``SIGMA_PSF_HSM`` in pixels, ``FLAG_PSF_HSM``).

Combination: the PSF sigma is the mean of the epochs' HSM sigmas (as
ShapePipe), over epochs whose HSM flag is 0 and sigma finite and positive;
the PSF stamp is the mean of the epochs' stamps, each normalised to unit
sum. An epoch without ``SIGMA_PSF_HSM`` gets the HSM sigma of its stamp
(HSM's adaptive moments, :mod:`shapepipe_modules.io.moments`). Objects
absent from the store, recorded as having no epoch, or with no usable epoch
have no PSF.

The store is read in bulk (:meth:`StampStore.get_many`), and without
decoding the stamps when only the sigmas are needed.
"""

from __future__ import annotations

import math

import numpy as np


def _hsm_sigma(stamp) -> float:
    from shapepipe_modules.io.moments import adaptive_moments

    moments = adaptive_moments(np.asarray(stamp, float)[None])
    return float(moments["sigma"][0]) if moments["flag"][0] == 0 else np.nan


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
                sigma = math.nan
        elif stamp is not None:
            sigma = _hsm_sigma(stamp)
        else:
            sigma = math.nan
        if not (math.isfinite(sigma) and sigma > 0):
            continue
        if want_stamps:
            if stamp is None:
                continue
            total = float(stamp.sum(dtype=np.float64))
            if not (math.isfinite(total) and total > 0):
                continue
            stamps.append((stamp, total))
        sigmas.append(sigma)
    if not sigmas:
        return math.nan, None
    stamp = None
    if want_stamps:
        shapes = {s.shape for s, _ in stamps}
        if len(shapes) != 1:
            raise ValueError(f"PSF stamps of one object have different shapes {sorted(shapes)}")
        # Mean of the unit-sum stamps.
        stamp = np.zeros(stamps[0][0].shape)
        for epoch_stamp, total in stamps:
            stamp += epoch_stamp * np.float64(1.0 / (total * len(stamps)))  # in double precision
    return sum(sigmas) / len(sigmas), stamp


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
    records = store.get_many(ids, arrays=want_stamps)
    if not want_stamps:
        # Epochs without a stored sigma need their stamp: read those objects again, whole.
        lacking = [object_id for object_id, record in records.items()
                   if any("SIGMA_PSF_HSM" not in epoch.meta for epoch in record.values())]
        if lacking:
            records.update(store.get_many(lacking, arrays=True))
    for k, object_id in enumerate(ids.tolist()):
        record = records.get(int(object_id))
        if record is None or record.reason is not None:
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
