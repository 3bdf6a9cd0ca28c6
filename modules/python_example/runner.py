"""Declaration of the ``python_example`` module."""

from shapepipe.datasets import Product
from shapepipe.module import module
from shapepipe.options import Option

from .python_example import combine, write_output


PRODUCTS = (
    Product("pyex_output", "pyex_output{number}.cat", "text", ids=("number",), description="example output"),
)


@module(
    name="python_example",
    products=PRODUCTS,
    version="1.1",
    description="Example: write MESSAGE followed by the contents of two input files.",
    aliases=("python_example_runner",),
    file_pattern=("numbers", "letters"),
    file_ext=(".txt", ".txt"),
    numbering_scheme="_0",
    depends=("numpy",),
    options=(
        Option("MESSAGE", "str", help="Text written before the combined content."),
        Option("SLEEP", "float", 0.0, "Seconds each job waits before working (for trying time-outs)."),
    ),
)
def python_example(job):
    """Write ``pyex_output<number>.cat`` = MESSAGE + '<first> and <second>'."""
    content = combine(job.inputs[0], job.inputs[1], job.options["SLEEP"])
    write_output(job.output_path(f"pyex_output{job.number}.cat"), job.options["MESSAGE"], content)
    job.logger.info("content: %s", content)
    return {"characters": len(content)}
