"""Runners: how the agent reaches a device (``local``, ``ssh``, ``emulated``).

``base`` holds the Runner class and the registry; each runner module registers its class
when imported, and importing this package imports them all (as timm does with its model
families), so ``get_runner`` knows every kind.
"""

from . import emulated, local, ssh  # noqa: F401  (registers them)
from .base import AGENT, Runner, get_runner, list_runners

__all__ = ["AGENT", "Runner", "get_runner", "list_runners"]
