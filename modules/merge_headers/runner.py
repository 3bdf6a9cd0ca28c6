"""Declaration of the ``merge_headers`` module."""

from shapepipe.module import module
from shapepipe.options import Option

OPTIONS = (
    Option("OUTPUT_PATH", "str", "",
           "ShapePipe's folder for log_exp_headers.sqlite. Accepted and ignored (a note is "
           "logged): the store is written into this module run's output folder; later modules "
           "reference it as last:merge_headers."),
)


@module(
    name="merge_headers",
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

    if job.options["OUTPUT_PATH"]:
        job.logger.info(
            "OUTPUT_PATH = %s is ignored: %s is written into the module run's output folder",
            job.options["OUTPUT_PATH"], DEFAULT_NAME,
        )
    files = {number: paths[0] for number, paths in job.input_table.items()}
    return merge_header_files(files, job.output_path(DEFAULT_NAME), logger=job.logger)
