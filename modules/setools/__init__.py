"""SETools: selection of samples from SExtractor catalogues.

:mod:`.language` parses and evaluates expressions, :mod:`.config` reads
``.setools`` files, :mod:`.actions` computes masks, statistics, random
splits and new catalogues, :mod:`.plots` draws plots, and :mod:`.runner`
declares the pipeline module ``setools``.
"""
