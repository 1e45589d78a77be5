"""mixprune: Mix-and-Match pruning to verified edge releases.

Kept import-light on purpose: torch and timm load only inside the stages that need them.
"""

__version__ = "0.1.0"
