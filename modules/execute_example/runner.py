"""Declaration of the ``execute_example`` module."""

from shapepipe.datasets import Product
from shapepipe.module import module
from shapepipe.options import Option

from .execute_example import head_command


PRODUCTS = (
    Product("head_output", "head_output{number}.txt", "text", ids=("number",), description="example output"),
)


@module(
    name="execute_example",
    products=PRODUCTS,
    version="1.0",
    description="Example: save the output of the external program head for each input file.",
    aliases=("execute_example_runner",),
    input_module="python_example",
    file_pattern="pyex_output",
    file_ext=".cat",
    numbering_scheme="_0",
    executes=("head",),
    options=(Option("LINES", "int", 10, "Number of lines head prints."),),
)
def execute_example(job):
    """Write ``head_output<number>.txt``: the standard output of head."""
    completed = job.run_command(head_command(job.inputs[0], job.options["LINES"]))
    job.output_path(f"head_output{job.number}.txt").write_text(completed.stdout)
