"""Paste the tables of several catalogues into one file (ShapePipe's ``pastecat_runner``)."""
