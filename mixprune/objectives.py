"""What the choice of `mixprune rank` and `mixprune run` minimizes (--objective): the names.

A module of its own, standard library only, so that the run config (mixprune.config, which
reads the pruning and executor registries) and the ranking (which reads records only and
never loads stage code) take the names from one place.
"""

OBJECTIVES = ("latency", "size", "memory")  # p50 latency, compact file size, peak RSS
