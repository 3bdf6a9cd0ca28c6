"""Compiled loops of the stamp extraction: cutting many stamps of one image in one pass.

A stamp is copied from the file's pixels (a memory map, big-endian as FITS
stores them) straight into its place in a tile's array of every slot
``(targets, slots, size, size)``, the byte order swapped on the way, pixels
beyond the border set to a fill value: one read of the image pixels and one
write, where numpy needs a gather, a cast and a scatter. The values are the
file's bit for bit (a float is never converted, only its bytes reordered).

Only the common cases have a kernel: 2- and 4-byte pixels into an array of
the same type, and 16-bit integers into 32-bit integers (flag images);
:func:`cut_kernel_for` returns None for anything else, and the caller uses
numpy. None as well when numba is missing.
"""

from __future__ import annotations

import numpy as np


def _make_kernels():
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(cache=True, nogil=True)
    def cut(src, width, swap, sign16, ix, iy, half, fill, out, rows, slot):
        # src: (ny, nx) unsigned integers holding the file's bytes; out: (n, k, size, size) of the
        # target type, written at [rows[i], slot]. The pixel loop runs over the columns inside the
        # image only (no branch), the padding is written apart.
        ny, nx = src.shape
        size = 2 * half + 1
        for i in range(ix.size):
            r = rows[i]
            x0 = ix[i] - half
            y0 = iy[i] - half
            b0 = max(0, -x0)
            b1 = min(size, nx - x0)
            for a in range(size):
                yy = y0 + a
                if yy < 0 or yy >= ny or b1 <= b0:
                    for b in range(size):
                        out[r, slot, a, b] = fill
                    continue
                for b in range(b0):
                    out[r, slot, a, b] = fill
                for b in range(max(b1, 0), size):
                    out[r, slot, a, b] = fill
                line = src[yy]
                target = out[r, slot, a]
                if not swap:
                    for b in range(b0, b1):
                        target[b] = line[x0 + b]
                elif width == 2 and sign16:
                    for b in range(b0, b1):
                        v = np.int64(line[x0 + b])
                        v = ((v >> 8) & 0xFF) | ((v & 0xFF) << 8)
                        target[b] = v - ((v >> 15) << 16)
                elif width == 2:
                    for b in range(b0, b1):
                        v = np.int64(line[x0 + b])
                        target[b] = ((v >> 8) & 0xFF) | ((v & 0xFF) << 8)
                else:
                    for b in range(b0, b1):
                        v = np.int64(line[x0 + b])
                        target[b] = (((v >> 24) & 0xFF) | ((v >> 8) & 0xFF00) | ((v & 0xFF00) << 8)
                                     | ((v & 0xFF) << 24))

    @numba.njit(cache=True, nogil=True)
    def fill_inside(ny, nx, ix, iy, half, inside, outside, out, rows, slot):
        # Weight (or flag) of a slot without a weight (flag) file: ``inside`` on the image, ``outside``
        # beyond its border.
        size = 2 * half + 1
        for i in range(ix.size):
            r = rows[i]
            x0 = ix[i] - half
            y0 = iy[i] - half
            for a in range(size):
                row_in = 0 <= y0 + a < ny
                for b in range(size):
                    out[r, slot, a, b] = inside if row_in and 0 <= x0 + b < nx else outside

    @numba.njit(cache=True, nogil=True)
    def masked(flag, weight, rows, slot, out):
        # Pixels flagged (the padding included: it carries the padding bit) or with weight <= 0.
        size = flag.shape[2]
        for i in range(rows.size):
            r = rows[i]
            count = 0
            for a in range(size):
                for b in range(size):
                    count += (flag[r, slot, a, b] != 0) | (weight[r, slot, a, b] <= 0)
            out[r, slot] = count

    return cut, fill_inside, masked


_KERNELS = _make_kernels()
_UNSIGNED = {2: np.uint16, 4: np.uint32}


def cut_kernel_for(source: np.dtype, target: np.dtype):
    """``(unsigned source type, unsigned-or-target view type, swap, sign16)`` when a kernel cuts pixels
    of type ``source`` into an array of type ``target`` exactly, else None."""
    if _KERNELS is None:
        return None
    source, target = np.dtype(source), np.dtype(target)
    if source.kind not in "iuf" or source.itemsize not in _UNSIGNED or not target.isnative:
        return None
    swap = not source.isnative
    native = source.newbyteorder("=")
    if native == target:
        return _UNSIGNED[source.itemsize], _UNSIGNED[target.itemsize], swap, False
    if native == np.dtype(np.int16) and target == np.dtype(np.int32):
        return _UNSIGNED[2], None, swap, True
    return None


def cut_into_cube(image: np.ndarray, ix, iy, size: int, fill, cube: np.ndarray, rows, slot: int) -> bool:
    """Cut stamps of ``image`` centred on 0-based pixels ``(iy, ix)`` into ``cube[rows, slot]``, pixels
    beyond the border set to ``fill``. False (nothing written) when no kernel handles the types."""
    plan = cut_kernel_for(image.dtype, cube.dtype)
    if plan is None or image.ndim != 2:
        return False
    source, view, swap, sign16 = plan
    src = np.asarray(image).view(source)
    out = cube if view is None else cube.view(view)
    fill_bits = np.asarray(fill, dtype=cube.dtype).reshape(1).view(out.dtype)[0]
    # Stamps visited by image row: neighbours share pages and cache lines (same result, less waiting).
    iy = np.asarray(iy, dtype=np.int64)
    order = np.argsort(iy, kind="stable")
    _KERNELS[0](src, image.dtype.itemsize, swap, sign16, np.asarray(ix, dtype=np.int64)[order], iy[order],
                size // 2, fill_bits, out, np.asarray(rows, dtype=np.int64)[order], slot)
    return True


def fill_inside(shape, ix, iy, size: int, inside, outside, cube: np.ndarray, rows, slot: int):
    """``cube[rows, slot]``: ``inside`` on pixels of an image of ``shape``, ``outside`` beyond it."""
    rows = np.asarray(rows, dtype=np.int64)
    ix = np.asarray(ix, dtype=np.int64)
    iy = np.asarray(iy, dtype=np.int64)
    if _KERNELS is not None:
        _KERNELS[1](int(shape[0]), int(shape[1]), ix, iy, size // 2, cube.dtype.type(inside),
                    cube.dtype.type(outside), cube, rows, slot)
        return
    offsets = np.arange(size) - size // 2
    row_ok = (iy[:, None] + offsets >= 0) & (iy[:, None] + offsets < shape[0])
    col_ok = (ix[:, None] + offsets >= 0) & (ix[:, None] + offsets < shape[1])
    cube[rows, slot] = np.where(row_ok[:, :, None] & col_ok[:, None, :], inside, outside)


def masked_counts(flag: np.ndarray, weight: np.ndarray, rows, slot: int, out: np.ndarray):
    """``out[rows, slot]``: pixels of ``flag[rows, slot]`` non-zero or of ``weight[rows, slot]`` <= 0."""
    rows = np.asarray(rows, dtype=np.int64)
    if _KERNELS is not None:
        _KERNELS[2](flag, weight, rows, slot, out)
        return
    bad = (flag[rows, slot] != 0) | (weight[rows, slot] <= 0)
    out[rows, slot] = bad.reshape(rows.size, -1).sum(axis=1)
