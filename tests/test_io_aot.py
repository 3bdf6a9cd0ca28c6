"""Ahead-of-time builds of the numba kernels (modules/io/aot.py): the JIT dispatchers' results, no numba."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from shapepipe_modules.io import aot

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="no C compiler for numba.pycc")


def test_argument_tokens():
    assert aot.argument_token(np.zeros((3, 4), np.float32)) == "f4[2]"
    assert aot.argument_token(np.zeros(3, np.int64)) == "i8[1]"
    assert aot.argument_token(np.zeros((3, 4), bool)) == "b1[2]"
    frozen = np.zeros(5)
    frozen.flags.writeable = False
    assert aot.argument_token(frozen) == "f8[1,r]"
    assert aot.argument_token(np.zeros((4, 4))[:, ::2]) is None  # strided: the JIT dispatcher
    assert aot.argument_token(np.zeros(3, ">f8")) is None  # big-endian (FITS) data
    assert aot.argument_token(np.zeros(3, np.complex128)) is None
    assert [aot.argument_token(v) for v in (1.5, 3, True, np.float32(1), np.int16(2), np.bool_(True))] == \
        ["f8", "i8", "b1", "f4", "i2", "b1"]
    assert aot.argument_token("text") is None


def _stamps(count=40, size=25, seed=2):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    sigma = rng.uniform(1.5, 3.5, count)
    e1 = rng.uniform(-0.3, 0.3, count)
    stamps = np.exp(-(((xx - 12.2) ** 2) * (1 - e1[:, None, None]) + ((yy - 11.7) ** 2) * (1 + e1[:, None, None]))
                    / (2 * sigma[:, None, None] ** 2))
    return stamps + rng.normal(0, 1e-3, stamps.shape)


def test_moments_build_gives_the_jit_results_and_undeclared_types_still_work():
    from shapepipe_modules.io import moments, moments_kernels

    assert moments._kernels.compiled()
    images = np.ascontiguousarray(_stamps())
    results = []
    for function in (moments._kernels.adaptive, moments_kernels.adaptive):  # the build, numba's JIT
        out = np.empty((len(images), len(moments.OUTPUTS)))
        n_iter = np.zeros(len(images), np.int32)
        flags = np.zeros(len(images), np.int32)
        function(images, np.full(len(images), 5.0), 1e-6, 400, out, n_iter, flags)
        results.append((out, n_iter, flags))
    for built, jit in zip(*results):
        np.testing.assert_array_equal(built, jit)
    assert np.all(results[0][2] == 0) and np.all(results[0][0][:, 0] > 1.0)
    # A strided stamp cube is not a declared type: the call goes to the JIT dispatcher, same values.
    strided = np.zeros((len(images), 25, 50))
    strided[:, :, ::2] = images
    out = np.empty((len(images), len(moments.OUTPUTS)))
    n_iter = np.zeros(len(images), np.int32)
    flags = np.zeros(len(images), np.int32)
    moments._kernels.adaptive(strided[:, :, ::2], np.full(len(images), 5.0), 1e-6, 400, out, n_iter, flags)
    np.testing.assert_array_equal(out, results[1][0])


def test_sep_engine_with_the_build_gives_the_jit_catalogue(tmp_path, monkeypatch):
    from astropy.io import fits

    from shapepipe_modules.sextractor import kernels, sep_engine
    from shapepipe_modules.sextractor.config_files import ExtractionSettings, Parameter
    from shapepipe_modules.sextractor.columns import COLUMNS

    assert sep_engine.kernels.compiled()
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_sextractor_sim import make_ccd

    ccd = make_ccd(np.random.default_rng(9), nx=400, ny=500, n_stars=30, n_galaxies=80)
    image = np.ascontiguousarray(ccd["image"], np.float32)
    weight = np.ascontiguousarray(ccd["weight"], np.float32)
    settings = ExtractionSettings(back_size=(64, 64), phot_apertures=(5.0, 10.0), phot_fluxfrac=(0.5, 0.8))
    parameters = [Parameter(name) for name in COLUMNS if name != "VIGNET"] + [Parameter("VIGNET", (15, 15))]
    kernel = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])
    header = fits.Header(ccd["header"]) if not isinstance(ccd["header"], fits.Header) else ccd["header"]
    tables = []
    for flag_type in (np.int16, np.int32):
        flags = np.zeros(image.shape, flag_type)
        flags[100:110, 50:300] = 4
        for chosen in (sep_engine.kernels, kernels):
            monkeypatch.setattr(sep_engine, "kernels", chosen)
            table = sep_engine.extract(image, header, settings, parameters, kernel, weight=weight,
                                       flag_image=flags, keep_background=False)
            tables.append(table.table)
    assert len(tables[0]) >= 40
    for built, jit in ((tables[0], tables[1]), (tables[2], tables[3])):
        assert built.colnames == jit.colnames
        for name in built.colnames:
            np.testing.assert_array_equal(np.asarray(built[name]), np.asarray(jit[name]), err_msg=name)


def test_a_fresh_process_measures_without_importing_numba():
    from shapepipe_modules.io import moments, psfex_file

    assert moments._kernels.compiled() and psfex_file._kernels.compiled()  # built (by this test run if needed)
    code = ("import sys, numpy as np\n"
            "from shapepipe_modules.io import moments, psfex_file\n"
            "yy, xx = np.mgrid[:21, :21]\n"
            "r = moments.adaptive_moments(np.exp(-((xx - 10.3) ** 2 + (yy - 9.8) ** 2) / 8.0)[None])\n"
            "model = psfex_file.PSFModel(basis=np.random.default_rng(1).random((3, 25, 25)), degree=1,\n"
            "    zero=(100.0, 100.0), scale=(50.0, 50.0), sampling=1.0)\n"
            "stamps = model.evaluate(np.linspace(50, 150, 100), np.linspace(50, 150, 100), size=21)\n"
            "print(round(float(r['sigma'][0]), 3), stamps.shape, 'numba' in sys.modules, 'scipy' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["2.0", "(100,", "21,", "21)", "False", "False"]


def test_a_failed_build_is_not_retried_and_the_jit_dispatchers_run(tmp_path, monkeypatch):
    from shapepipe_modules.io import moments, moments_kernels

    calls = []

    def failing(*args):
        calls.append(args)
        raise RuntimeError("no C compiler")

    monkeypatch.setenv("SHAPEPIPE_AOT_DIR", str(tmp_path))
    monkeypatch.setattr(aot, "build_extension", failing)
    signatures = moments._kernels.signatures
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        assert not aot.Kernels("shapepipe_modules.io.moments_kernels", signatures).compiled()
    assert len(calls) == 1 and len(list(tmp_path.glob("*.failed"))) == 1
    again = aot.Kernels("shapepipe_modules.io.moments_kernels", signatures)
    assert not again.compiled() and len(calls) == 1  # the marker: no second attempt
    assert again.adaptive is moments_kernels.adaptive  # numba's dispatcher
