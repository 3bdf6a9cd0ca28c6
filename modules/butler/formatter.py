"""The butler formatter of every ShapePipe product: it reads with the pipeline's own readers.

The storage class of a dataset type names the reader (``ShapePipeLdac`` ->
``ldac``), so ``Butler.get`` returns exactly what ``Repository.get`` returns.
"""

from __future__ import annotations

from lsst.daf.butler import FormatterV2

STORAGE_PREFIX = "ShapePipe"


def storage_class_name(reader_name: str) -> str:
    """``fits_image`` -> ``ShapePipeFitsImage``."""
    return STORAGE_PREFIX + "".join(part.capitalize() for part in reader_name.split("_"))


def storage_classes() -> dict:
    """Butler configuration of one storage class per registered reader."""
    from shapepipe.datasets import readers

    classes = {}
    for name, reader in readers().items():
        pytype = reader.python_type if "." in reader.python_type else f"builtins.{reader.python_type}"
        classes[storage_class_name(name)] = {"pytype": pytype}
    return classes


class ShapePipeFormatter(FormatterV2):
    """Reads a product file in place with the reader its storage class names (read only)."""

    can_read_from_local_file = True

    def read_from_local_file(self, path, component=None, expected_size=-1):
        from shapepipe.datasets import readers

        storage = self.file_descriptor.storageClass.name
        by_storage = {storage_class_name(name): reader for name, reader in readers().items()}
        if storage not in by_storage:
            raise ValueError(f"{path}: storage class {storage} names no ShapePipe reader")
        return by_storage[storage].read(path)
