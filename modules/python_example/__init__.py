"""Example parallel Python module (ShapePipe's ``python_example_runner``)."""
