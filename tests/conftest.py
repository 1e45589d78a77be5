import os

os.environ.setdefault("MIXPRUNE_QUIET", "1")
