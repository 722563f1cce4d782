"""Configuration: the typed schema (:mod:`.schema`), class lists (:mod:`.classes`) and loading.

Imports nothing from the rest of dist_seg but :mod:`dist_seg.errors` and :mod:`dist_seg.atomic`:
every other package depends on this one, never the other way round.
"""

from .classes import DAVID_CLASSES, IGNORE_INDEX, ClassSpec, read_class_file
from .schema import *  # noqa: F401,F403
from .schema import REQUIRED, config_from_dict, config_to_dict, load_config, save_config  # noqa: F401
