"""Declaration of the ``merge_headers`` module."""

from shapepipe.datasets import Product
from shapepipe.module import module
from shapepipe.options import Option

OPTIONS = (
    Option("OUTPUT_PATH", "path", "",
           "ShapePipe's folder for log_exp_headers.sqlite. The store is always written into this "
           "module run's output folder (later modules reference it as last:merge_headers); when "
           "OUTPUT_PATH is set, a copy is also written there atomically, so ShapePipe configs that "
           "name $SP_RUN/output/log_exp_headers.sqlite keep working."),
)


PRODUCTS = (
    Product("log_exp_headers", "log_exp_headers.sqlite", "header_store",
            description="every CCD header of every exposure (WCS for multi-epoch work)"),
)


@module(
    name="merge_headers",
    products=PRODUCTS,
    version="2.0",
    description="Merge the per-CCD headers written by split_exp into one header store "
                "(log_exp_headers.sqlite, text headers, WCS on demand).",
    aliases=("merge_headers_runner",),
    input_module="split_exp",
    file_pattern=("headers",),
    file_ext=(".npy",),
    numbering_scheme="-0000000",
    run_method="serial",
    depends=("numpy", "astropy", "sqlitedict"),
    options=OPTIONS,
)
def merge_headers(job):
    """Write log_exp_headers.sqlite with the headers of every exposure number."""
    from .merge_headers import DEFAULT_NAME, merge_header_files

    files = {number: paths[0] for number, paths in job.input_table.items()}
    store = job.output_path(DEFAULT_NAME)
    summary = merge_header_files(files, store, logger=job.logger)
    if job.options["OUTPUT_PATH"]:
        import shutil
        from pathlib import Path

        from shapepipe.atomic import atomic_path

        copy = Path(job.options["OUTPUT_PATH"]).expanduser() / DEFAULT_NAME
        with atomic_path(copy) as temporary:
            shutil.copyfile(store, temporary)
        job.logger.info("copy of the header store written to %s (OUTPUT_PATH)", copy)
    return summary
