"""Named bit flags of the metacal engine and their decoder.

Every object measured is written out; what went wrong is carried in the
``flags`` (per branch) and ``mcal_flags`` (all branches OR-ed) columns.
"""

from __future__ import annotations

#: No usable epoch (all off the chip edge, too many flagged pixels, with a
#: failed PSF fit or a bad PSF stamp).
NO_EPOCHS = 1 << 0
#: The Gaussian fit of the original PSF failed in at least one epoch (that
#: epoch was dropped, as in ShapePipe).
PSF_FIT_FAIL = 1 << 1
#: Adaptive moments failed on every epoch; a default starting point was used.
MOMENTS_FAIL = 1 << 2
#: The metacalibration image operations failed (bad PSF or Jacobian).
METACAL_FAIL = 1 << 3
#: The galaxy fit converged in none of its tries.
FIT_FAIL = 1 << 4
#: The fit converged but its covariance matrix is not positive.
BAD_COVARIANCE = 1 << 5
#: The fit of the reconvolution PSF failed.
TARGET_PSF_FIT_FAIL = 1 << 6
#: The fitted flux is not positive (the magnitude is undefined).
NONPOSITIVE_FLUX = 1 << 7
#: The PSF stamp of at least one epoch has a sum that is not finite and
#: positive (it cannot be normalised): that epoch was dropped.
BAD_PSF_STAMP = 1 << 8

FLAG_NAMES = {
    NO_EPOCHS: "NO_EPOCHS",
    PSF_FIT_FAIL: "PSF_FIT_FAIL",
    MOMENTS_FAIL: "MOMENTS_FAIL",
    METACAL_FAIL: "METACAL_FAIL",
    FIT_FAIL: "FIT_FAIL",
    BAD_COVARIANCE: "BAD_COVARIANCE",
    TARGET_PSF_FIT_FAIL: "TARGET_PSF_FIT_FAIL",
    NONPOSITIVE_FLUX: "NONPOSITIVE_FLUX",
    BAD_PSF_STAMP: "BAD_PSF_STAMP",
}

#: Flags that mean the shape measurement of the branch is unusable.
FATAL = NO_EPOCHS | METACAL_FAIL | FIT_FAIL | BAD_COVARIANCE | TARGET_PSF_FIT_FAIL


def flags_to_names(flags):
    """Decode a flag value into the names of its bits.

    Parameters
    ----------
    flags : int
        Flag value.

    Returns
    -------
    list of str
        Names of the bits set, lowest first; unknown bits appear as
        ``"BIT<n>"``.
    """
    flags = int(flags)
    if flags < 0:
        raise ValueError(f"flags must be non-negative, got {flags}")
    names = []
    bit = 0
    while flags >> bit:
        value = 1 << bit
        if flags & value:
            names.append(FLAG_NAMES.get(value, f"BIT{bit}"))
        bit += 1
    return names
