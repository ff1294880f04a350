"""llama-batches: an OpenAI-compatible Batches API as a pluggable provider library in the llama-stack style.

```python
from llama_batches import build_stack

async with build_stack("run.yaml") as stack:
    models = await stack.models.list_models()
```
"""

from __future__ import annotations

from .api import Api
from .config import RunConfig, load_config
from .errors import (
    APIError,
    ConfigError,
    ConflictError,
    InvalidRequestError,
    LlamaBatchesError,
    NotFoundError,
    StackError,
)
from .principal import ANONYMOUS, acting_as, current_principal
from .registry import ProviderDeps, ProviderKind, ProviderRegistry, ProviderSpec, default_registry
from .stack import Stack, build_stack

__version__ = "0.1.0"

__all__ = [
    "ANONYMOUS",
    "APIError",
    "Api",
    "ConfigError",
    "ConflictError",
    "InvalidRequestError",
    "LlamaBatchesError",
    "NotFoundError",
    "ProviderDeps",
    "ProviderKind",
    "ProviderRegistry",
    "ProviderSpec",
    "RunConfig",
    "Stack",
    "StackError",
    "__version__",
    "acting_as",
    "build_stack",
    "current_principal",
    "default_registry",
    "load_config",
]
