"""Options that ShapePipe's configurations hold but that change nothing here.

Each is declared once and listed by the modules whose ShapePipe sections
hold it. Setting one is accepted with a warning (the key is named) and has
no effect; ``docs/shapepipe.md`` says why for each.
"""

from __future__ import annotations

from shapepipe.options import Option

NO_EFFECT = " ShapePipe-only: accepted with a warning, no effect here."

#: ShapePipe's MCCD sections repeat the MCCD program's own settings.
MCCD_VERBOSE = Option("VERBOSE", "bool", None, "Verbosity of ShapePipe's MCCD program; job logs always hold "
                      "the messages." + NO_EFFECT, ignored=True)
MCCD_MODE = Option("MODE", "str", None, "ShapePipe's MCCD run mode (FIT, FIT_VALIDATION, VALIDATION), "
                   "copied into sections that do not read it." + NO_EFFECT, ignored=True)
MCCD_CONFIG_PATH = Option("CONFIG_PATH", "str", None, "ShapePipe's MCCD configuration file (config_MCCD.ini), "
                          "copied into sections that do not read it." + NO_EFFECT, ignored=True)

#: ShapePipe's ngmix appends to the catalogue it finds there (batch saves);
#: here ``shapepipe_run --resume`` reruns only unfinished jobs.
CHECK_EXISTING_DIR = Option("CHECK_EXISTING_DIR", "str", None, "ShapePipe's ngmix appends to the catalogue "
                            "found in this folder (with SAVE_BATCH); here --resume / --resume-if-any rerun only "
                            "unfinished jobs from the run records." + NO_EFFECT, ignored=True)
