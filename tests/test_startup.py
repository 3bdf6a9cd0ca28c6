"""What a fresh pipeline process imports and starts before its first job."""

import os
import subprocess
import sys

from shapepipe.threads import BLAS_THREAD_VARIABLES, single_threaded_blas_by_default


def _clean_environment():
    return {k: v for k, v in os.environ.items() if k not in BLAS_THREAD_VARIABLES}


def test_unset_blas_thread_variables_become_one_and_set_ones_are_kept():
    environ = {"MKL_NUM_THREADS": "4"}
    added = single_threaded_blas_by_default(environ)
    assert added == {"OPENBLAS_NUM_THREADS": "1"}
    assert environ == {"MKL_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "1"}
    assert single_threaded_blas_by_default(environ) == {}


def test_the_command_line_gives_numpy_one_blas_thread_unless_the_user_chose():
    code = ("import shapepipe.cli, numpy, threadpoolctl\n"
            "blas = [p for p in threadpoolctl.threadpool_info() if p['user_api'] == 'blas']\n"
            "print(blas[0]['num_threads'] if blas else 'none')\n")
    default = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env=_clean_environment()).stdout.split()
    chosen = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**_clean_environment(), "OPENBLAS_NUM_THREADS": "2"}).stdout.split()
    if default == ["none"]:  # a numpy without a BLAS that threadpoolctl sees: nothing to check
        return
    assert default == ["1"]
    assert chosen == ["2"]


def test_the_module_registry_imports_no_numpy():
    code = ("import sys\n"
            "from shapepipe.module import default_registry\n"
            "registry = default_registry()\n"
            "print(len(list(registry)), sorted(m for m in ('numpy', 'astropy', 'scipy', 'matplotlib') "
            "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    count, heavy = out.split(" ", 1)
    assert int(count) > 20
    assert heavy.strip() == "[]"


def test_the_package_level_names_still_import():
    from shapepipe_modules.make_catalog import join_index, make_final_catalogue
    from shapepipe_modules.make_catalog.catalogue import join_index as direct
    from shapepipe_modules.merge_sep_cats import MergeError, merge_split_catalogues
    from shapepipe_modules.spread_model import FLAGS, classify
    from shapepipe_modules.spread_model.spread_model import classify as direct_classify
    from shapepipe_modules.vignetmaker import central_pixels, cut_stamps

    assert join_index is direct and classify is direct_classify
    assert callable(make_final_catalogue) and callable(merge_split_catalogues) and callable(cut_stamps)
    assert issubclass(MergeError, Exception) and isinstance(FLAGS, dict) and callable(central_pixels)
