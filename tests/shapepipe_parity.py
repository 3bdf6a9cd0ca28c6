"""Dry-run ShapePipe's example configurations (our comment-free forms in
``tests/data/shapepipe_configs``) in a sandbox with the environment they expect.

The forms keep ShapePipe's sections, keys and values; the sandbox gives the
variables their scripts set (``SP_RUN``, ``SP_CONFIG``, ``SPDIR``, ``VM_HOME``)
and the configuration files they point at. Problems about input data that a
fresh sandbox cannot hold (earlier runs, input folders under ``SP_RUN``) are
counted apart: they are not configuration problems.

Used by ``tests/test_shapepipe_configs.py`` and runnable as a script that
prints how many forms validate::

    python tests/shapepipe_parity.py
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import sys
from pathlib import Path

FORMS = Path(__file__).resolve().parent / "data" / "shapepipe_configs"

#: Files of the example folders that are inputs of other configs, not runs.
NOT_RUN_CONFIGS = {"config_MCCD.ini", "config_stats.ini"}

_MISSING_DATA = re.compile(
    r"no successful \(done or partial\)|no run named|no input file matches|directory \S+ does not exist"
)

#: What ShapePipe's job scripts (job_sp.bash, job_sp_canfar.bash) put in place
#: of the X placeholders of its *_template.ini files before running them.
TEMPLATE_VALUES = (
    (re.compile(r"^(ID_OBJ_MIN\s*=)\s*X\s*$", re.M), r"\1 1"),
    (re.compile(r"^(ID_OBJ_MAX\s*=)\s*X\s*$", re.M), r"\1 5000"),
    (re.compile(r"^(N_SPLIT_MAX\s*=)\s*X\s*$", re.M), r"\1 8"),
    (re.compile(r"NgXu"), "Ng1u"),
    (re.compile(r"X_interp"), "psfex_interp"),
)


def instantiate(text: str) -> str:
    """A template config with its placeholders filled as ShapePipe's job scripts fill them."""
    for pattern, value in TEMPLATE_VALUES:
        text = pattern.sub(value, text)
    return text


def run_configs():
    """Every run configuration form, as paths (sorted)."""
    return sorted(p for p in FORMS.rglob("config*.ini") if p.name not in NOT_RUN_CONFIGS)


def _mask_aux(folder: Path):
    """The mask_default files the .mask forms name (our own content)."""
    import numpy as np
    from astropy.io import fits
    from astropy.table import Table

    data = Path(__file__).resolve().parent.parent / "modules" / "mask" / "data"
    target = folder / "mask_default"
    target.mkdir(exist_ok=True)
    shutil.copy(data / "halo.reg", target / "halo_mask.reg")
    shutil.copy(data / "spike.reg", target / "MEGAPRIME_star_i_13.8.reg")
    (target / "default.ww").write_text("# weightwatcher configuration placeholder of the test sandbox\n")
    deep = Table({"ra": np.array([10.68]), "dec": np.array([41.27]), "size": np.array([0.5])})
    deep.write(target / "Messier_catalog_updated.fits", overwrite=True)
    ngc = Table({"ra": np.array([10.68]), "dec": np.array([41.27]), "size": np.array([0.1])})
    ngc.write(target / "ngc_cat.fits", overwrite=True)
    fits.PrimaryHDU().writeto(target / "empty.fits", overwrite=True)


def sandbox(config: Path, root: Path) -> dict:
    """Make the folders and files a configuration expects; return its environment."""
    root = Path(root)
    sp_config = root / "config"
    if sp_config.exists():
        shutil.rmtree(sp_config)
    shutil.copytree(config.parent, sp_config)
    _mask_aux(sp_config)
    if "_template" in config.name:
        target = sp_config / config.name
        target.write_text(instantiate(target.read_text()))
    conv = sp_config / "default.conv"
    if not conv.exists():
        conv.write_text("CONV NORM\n1 2 1\n2 4 2\n1 2 1\n")
    sp_run = root / "sp_run"
    for sub in ("output", "data_exp", "data_tiles", "input_exp/images", "input_tiles", "psf_validation_ind",
                "star_all_ind", "psf_model", "data"):
        (sp_run / sub).mkdir(parents=True, exist_ok=True)
    spdir = root / "spdir"
    for base in (spdir, root / "cwd"):
        for kind in ("numbers", "letters"):
            folder = base / "example" / "data" / kind
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{kind}_1.txt").write_text("1\n")
        (base / "example" / "output").mkdir(parents=True, exist_ok=True)
    return {"SP_RUN": str(sp_run), "SP_CONFIG": str(sp_config), "SPDIR": str(spdir),
            "VM_HOME": str(root / "home"), "HOME": str(root / "home")}


def dry_run(config: Path, root: Path):
    """Run ``shapepipe_run -c CONFIG --dry-run`` in the sandbox.

    Returns
    -------
    status : int
        The exit status.
    problems : list of str
        Configuration problems, missing input data left out.
    missing : list of str
        Problems about input data the sandbox does not hold.
    output : str
        Standard output and error.
    """
    from shapepipe import cli

    env = sandbox(config, root)
    saved = {key: os.environ.get(key) for key in env}
    cwd = os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.update(env)
        os.chdir(Path(root) / "cwd")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli.main(["-c", str(Path(env["SP_CONFIG"]) / config.name), "--dry-run"])
    finally:
        os.chdir(cwd)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    text = err.getvalue()
    lines = [line[4:] for line in text.splitlines() if line.startswith("  - ")]
    if not lines and status == 2:
        lines = [text.split("configuration error: ", 1)[-1].strip()]
    problems = [line for line in lines if not _MISSING_DATA.search(line)
                and not ("does not exist" in line and env["SP_RUN"] in line)]
    missing = [line for line in lines if line not in problems]
    return status, problems, missing, out.getvalue() + text


def validates(status: int, problems) -> bool:
    """Valid: exit 0, exit 3 (only programs missing) or only missing input data."""
    return status in (0, 3) or (status == 2 and not problems)


def main(argv=None) -> int:
    import tempfile

    configs = run_configs()
    good = 0
    for config in configs:
        with tempfile.TemporaryDirectory() as root:
            status, problems, missing, _ = dry_run(config, Path(root))
        ok = validates(status, problems)
        good += ok
        name = config.relative_to(FORMS)
        print(f"{'ok  ' if ok else 'FAIL'} {name} (exit {status}, {len(missing)} missing-data notes)")
        for problem in problems:
            print(f"       {problem}")
    print(f"{good} of {len(configs)} configurations validate")
    return 0 if good == len(configs) else 1


if __name__ == "__main__":
    sys.exit(main())
