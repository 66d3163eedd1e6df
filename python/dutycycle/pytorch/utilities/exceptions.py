"""lightning.pytorch.utilities.exceptions: MisconfigurationException (dutycycle.callbacks')."""

from ...callbacks._utils import MisconfigurationException

__all__ = ["MisconfigurationException"]
