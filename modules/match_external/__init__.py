"""Match a catalogue to an external one (ShapePipe's ``match_external_runner``)."""
