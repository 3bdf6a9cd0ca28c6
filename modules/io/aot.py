"""Numba kernels compiled ahead of time into an extension module that loads without numba.

A fresh process calling a numba kernel pays numba's start-up even when the
kernel comes from numba's on-disk cache: numba's import, its type registries
and scipy's BLAS check, about 0.5 s of CPU per worker and per array task
(``benchmarks/bench_startup.py``). The same kernels compiled ahead of time
(``numba.pycc``) into a CPython extension module load in about a millisecond,
with neither numba nor scipy imported.

:class:`Kernels` gives the kernels of one numba module: for a call whose
argument types are declared, the function of the extension module; for any
other call (or without the extension) the module's own numba dispatcher, as
before. The extension's name carries a hash of the kernels' source, the
declared signatures, the Python, numpy and numba versions and the CPU, so a
changed kernel or another machine type never loads a stale build. The first
process that misses it builds it (under a lock file; 10-30 s of CPU, once per
installation and CPU type, as numba's own cache is filled once) and every
later process loads it. The machine code is numba's for this CPU (the host's
CPU name and features, as its JIT uses) and every function a kernel calls
keeps its own numba options (``fastmath`` ...): the results are those of the
JIT dispatchers (``tests/test_io_aot.py``).

Signatures are written as one token per argument: ``f8``, ``i8``, ``b1``,
``f4`` (scalars: Python ``float``, ``int``, ``bool``, numpy scalars) and
``f4[2]`` (a C-contiguous, aligned, native-order, writeable float32 array of
2 dimensions; ``f8[1,r]`` read-only). Other arguments (strided or big-endian
arrays, ...) always go to the JIT dispatcher.

``SHAPEPIPE_AOT=0`` in the environment: JIT dispatchers only, no build.
``SHAPEPIPE_AOT_DIR``: folder of the builds (default: ``__pycache__`` beside
the numba module when writable, else ``~/.cache/shapepipe/aot``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

#: A lock file older than this (seconds) belongs to a build that died: it is taken over.
STALE_LOCK_S = 900.0
_SCALAR_TOKENS = {bool: "b1", int: "i8", float: "f8"}


def argument_token(value) -> str | None:
    """The signature token of one argument (see the module docstring), or None when undeclarable."""
    if isinstance(value, np.ndarray):
        flags = value.flags
        if value.ndim == 0 or not (flags.c_contiguous and flags.aligned) or value.dtype.byteorder == ">":
            return None
        if value.dtype.kind not in "biuf":
            return None
        return f"{value.dtype.kind}{value.dtype.itemsize}[{value.ndim}{'' if flags.writeable else ',r'}]"
    token = _SCALAR_TOKENS.get(type(value))
    if token is not None:
        return token
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return f"{value.dtype.kind}{value.dtype.itemsize}"
    return None


def _cpu_identity() -> str:
    """Text identifying the CPU type (model and instruction-set flags), read without numba or llvmlite."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    wanted = ("model name", "flags", "cpu family", "model\t")
    lines = []
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        if line.startswith(wanted):
            lines.append(" ".join(line.split()))
    return f"{platform.machine()} " + "\n".join(lines)


def _numba_version() -> str:
    """numba's version text, read from its ``_version.py`` without importing numba (or 'absent')."""
    spec = importlib.util.find_spec("numba")
    if spec is None or spec.origin is None:
        return "absent"
    try:
        return (Path(spec.origin).parent / "_version.py").read_text()
    except OSError:
        return str(Path(spec.origin).parent)


class Kernels:
    """The kernels of one numba module, from its ahead-of-time build when there is one.

    Parameters
    ----------
    source : str
        The module defining the kernels with ``numba.njit`` (imported only
        for a build or a call not covered by the build).
    signatures : dict
        Kernel name -> list of signatures, each a tuple of argument tokens.

    Attributes of this object are the kernels: ``kernels.auto_photometry(...)``.
    """

    def __init__(self, source: str, signatures: dict):
        self.source = source
        self.signatures = {name: [tuple(sig) for sig in sigs] for name, sigs in signatures.items()}
        self._module = None  # the extension module, once loaded
        self._tried = False
        self._functions: dict = {}

    # -- naming -------------------------------------------------------------------------------------------
    def _source_path(self) -> Path:
        spec = importlib.util.find_spec(self.source)
        if spec is None or spec.origin is None:
            raise ImportError(f"no module {self.source}")
        return Path(spec.origin)

    def extension_name(self) -> str:
        """Module name of the build for this source, these signatures, versions and CPU."""
        digest = hashlib.sha256()
        digest.update(self._source_path().read_bytes())
        digest.update(json.dumps(self.signatures, sort_keys=True).encode())
        for part in (sys.version, np.__version__, _numba_version(), _cpu_identity()):
            digest.update(part.encode())
        digest.update(Path(__file__).read_bytes())  # the way builds are made
        stem = self.source.rsplit(".", 1)[-1]
        return f"_aot_{stem}_{digest.hexdigest()[:16]}"

    def _folders(self) -> list[Path]:
        chosen = os.environ.get("SHAPEPIPE_AOT_DIR")
        if chosen:
            return [Path(chosen)]
        home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shapepipe" / "aot"
        return [self._source_path().parent / "__pycache__", home]

    # -- loading ------------------------------------------------------------------------------------------
    def _load(self):
        if self._tried:
            return self._module
        self._tried = True
        if os.environ.get("SHAPEPIPE_AOT", "1") == "0":
            return None
        name = self.extension_name()
        filename = name + importlib.machinery.EXTENSION_SUFFIXES[0]
        for folder in self._folders():
            path = folder / filename
            if path.is_file():
                self._module = _import_extension(name, path)
                if self._module is not None:
                    return self._module
        self._module = self._build(name, filename)
        return self._module

    def _build(self, name: str, filename: str):
        """Build the extension into the first writable folder (one process at a time); None if not built."""
        if importlib.util.find_spec("numba") is None:
            return None  # nothing to build with; callers without numba have their own fallbacks
        for folder in self._folders():
            failed = folder / (filename + ".failed")
            if failed.is_file():
                return None  # this build failed here before (no compiler...): JIT, without trying again
            try:
                folder.mkdir(parents=True, exist_ok=True)
                lock = folder / (filename + ".lock")
                try:
                    descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    if time.time() - lock.stat().st_mtime < STALE_LOCK_S:
                        return None  # another process builds it: the JIT dispatchers meanwhile
                    lock.unlink(missing_ok=True)
                    descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except OSError:
                continue  # not writable: the next folder
            os.close(descriptor)
            try:
                path = build_extension(self.source, self.signatures, name, folder)
                return _import_extension(name, path)
            except Exception as error:  # noqa: BLE001  no compiler, pycc gone: the JIT path still works
                message = (f"ahead-of-time build of {self.source} failed ({type(error).__name__}: {error}); "
                           f"numba's JIT dispatchers are used (delete {failed} to try again)")
                try:
                    failed.write_text(message + "\n")
                except OSError:
                    pass
                warnings.warn(message, RuntimeWarning, stacklevel=3)
                return None
            finally:
                lock.unlink(missing_ok=True)
        return None

    def compiled(self) -> bool:
        """Whether the ahead-of-time build is loaded (building it if needed)."""
        return self._load() is not None

    def available(self) -> bool:
        """Whether the kernels can run: their build is loaded, or numba is installed (JIT)."""
        return self.compiled() or importlib.util.find_spec("numba") is not None

    # -- calling ------------------------------------------------------------------------------------------
    def __getattr__(self, name: str):
        if name.startswith("_") and name not in self.__dict__.get("signatures", {}):
            raise AttributeError(name)
        functions = self.__dict__["_functions"]
        if name not in functions:
            functions[name] = self._dispatcher(name)
        return functions[name]

    def _dispatcher(self, name: str):
        if name not in self.signatures:
            return getattr(importlib.import_module(self.source), name)  # constants, undeclared kernels
        module = self._load()
        if module is None:
            return getattr(importlib.import_module(self.source), name)
        table = {sig: getattr(module, f"{name}__{i}") for i, sig in enumerate(self.signatures[name])}
        source = self.source

        def call(*args):
            key = tuple(argument_token(value) for value in args)
            function = table.get(key)
            if function is None:
                function = getattr(importlib.import_module(source), name)
            return function(*args)

        call.__name__ = call.__qualname__ = name
        call.__doc__ = f"{name} of {source} (ahead-of-time build for the declared argument types)."
        return call


def _import_extension(name: str, path: Path):
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except (ImportError, OSError):
        return None


def numba_type(token: str):
    """The numba type of a signature token (needs numba: builds only)."""
    from numba import types

    kinds = {"b1": types.boolean, "i1": types.int8, "i2": types.int16, "i4": types.int32, "i8": types.int64,
             "u1": types.uint8, "u2": types.uint16, "u4": types.uint32, "u8": types.uint64,
             "f4": types.float32, "f8": types.float64}
    if "[" not in token:
        return kinds[token]
    scalar, _, rest = token.partition("[")
    parts = rest.rstrip("]").split(",")
    return types.Array(kinds[scalar], int(parts[0]), "C", readonly=len(parts) > 1 and parts[1] == "r")


def build_extension(source: str, signatures: dict, name: str, folder) -> Path:
    """Compile the kernels of ``source`` for ``signatures`` into ``folder/name<suffix>``; return its path.

    Each exported function is the kernel's own Python function compiled with
    numba's default options (every kernel with other options calls an inner
    function that has them), for the host CPU with its features, as numba's
    JIT compiles it.
    """
    import numba  # noqa: F401
    from numba.core import codegen

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from numba.pycc import CC
    module = importlib.import_module(source)
    folder = Path(folder)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".aot-") as scratch:
        cc = CC(name)
        cc.output_dir = scratch
        cc.target_cpu = "host"
        cc.verbose = False
        for kernel, sigs in signatures.items():
            dispatcher = getattr(module, kernel)
            for index, sig in enumerate(sigs):
                argtypes = tuple(numba_type(token) for token in sig)
                dispatcher.compile(argtypes)
                return_type = dispatcher.overloads[argtypes].signature.return_type
                cc.export(f"{kernel}__{index}", return_type(*argtypes))(dispatcher.py_func)
        # The host CPU's features as well as its name, as numba's JIT targets it (pycc: the name only).
        original = codegen.AOTCPUCodegen._customize_tm_features
        codegen.AOTCPUCodegen._customize_tm_features = lambda self: self._get_host_cpu_features()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cc.compile()
        finally:
            codegen.AOTCPUCodegen._customize_tm_features = original
        built = Path(scratch) / (name + importlib.machinery.EXTENSION_SUFFIXES[0])
        if not built.is_file():
            candidates = sorted(Path(scratch).glob(name + "*"))
            if not candidates:
                raise RuntimeError(f"pycc wrote no extension module in {scratch}")
            built = candidates[0]
        target = folder / (name + importlib.machinery.EXTENSION_SUFFIXES[0])
        os.replace(built, target)
    return target
