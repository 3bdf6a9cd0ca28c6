"""Built-in pipeline modules (installed as ``shapepipe_modules``).

One sub-package per module, each with a ``runner.py`` holding the module
declaration; shared file formats live in :mod:`shapepipe_modules.io`.
"""

#: Sections of ShapePipe modules that ShapePipe's own example configs still
#: hold but that ShapePipe (develop, v1.4) no longer ships; a configuration
#: holding one is accepted with a note, and the section is not read.
RETIRED_SECTIONS = {
    "galsim_shapes_v2": "ShapePipe's former GalSim shape module (removed before v1.0; its configs keep the "
                        "section); shapes come from ngmix",
    "mccd_merge_starcat": "ShapePipe's former MCCD star-catalogue merge (now merge_starcat with PSF_MODEL = mccd)",
}
