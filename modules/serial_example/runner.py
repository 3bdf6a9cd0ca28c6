"""Declaration of the ``serial_example`` module."""

from shapepipe.datasets import Product
from shapepipe.module import module

from .serial_example import concatenate

# ShapePipe's serial example writes this literal name; kept so that configs
# and scripts written for it find the file.
OUTPUT_NAME = "serial_outputfile_number_string.cat"


PRODUCTS = (
    Product("serial_output", "serial_outputfile_number_string.cat", "text", description="example output"),
)


@module(
    name="serial_example",
    products=PRODUCTS,
    version="1.1",
    description="Example: one job that concatenates the inputs of every file number.",
    aliases=("serial_example_runner",),
    input_module="python_example",
    file_pattern=("numbers", "letters", "pyex_output"),
    file_ext=(".txt", ".txt", ".cat"),
    numbering_scheme="_0",
    run_method="serial",
    depends=("numpy",),
)
def serial_example(job):
    """Write the concatenated contents of all inputs, number by number."""
    groups = [job.input_table[number] for number in job.input_table]
    content = concatenate(groups)
    job.output_path(OUTPUT_NAME).write_text(content)
    return {"numbers": len(groups)}
