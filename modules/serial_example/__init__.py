"""Example serial module (ShapePipe's ``serial_example_runner``)."""
