"""What a model is to mixprune: a timm architecture built from its spec with its weights (build.py),
a structured cut's record and replay (cuts.py, heads.py for vision transformers), and a model of the
run directory read into memory for a task (stored.py).

Only build.py's names are imported here, so ``import mixprune.models`` stays free of torch and
Torch-Pruning; cuts, heads and stored load where a stage needs them.
"""

from .build import (ModelSpec, build_model, check_model_name, list_models, load_state, load_weights, numpy_state,
                    read_state_dict)

__all__ = ["ModelSpec", "build_model", "check_model_name", "list_models", "load_state", "load_weights",
           "numpy_state", "read_state_dict"]
