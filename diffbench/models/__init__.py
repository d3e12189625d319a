"""Built-in model loaders: name → callable(**options) -> DiffusionModel."""
from __future__ import annotations

from diffbench.models import digits
from diffbench.models.diffusers import diffusers_model
from diffbench.models.gmm import gmm
from diffbench.models.python import python_model

MODELS = {"gmm": gmm, **digits.MODELS, "diffusers": diffusers_model, "python": python_model}
# Registry declarations (diffbench.registry.DECLARATIONS) of the models that have any.
DECLARATIONS = {"python": {"code_options": ("factory",)}}
