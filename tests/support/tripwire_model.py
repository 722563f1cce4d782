"""A custom model module that tests check is never imported: a checkpoint names it, the user does not.

Being in ``sys.modules`` after a command ran is the proof that the command imported code a
checkpoint named. It works when imported (a TinyNet), so code that did import it would
otherwise succeed silently.
"""

from fixtures_custom_model import TinyNet

__all__ = ["TinyNet"]
