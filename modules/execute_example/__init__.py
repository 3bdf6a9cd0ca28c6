"""Example module running an external program (ShapePipe's ``execute_example_runner``)."""
