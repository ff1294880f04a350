"""Which providers work in the background, and how a process turns that work on or off.

A provider whose instances run work of their own (the batches engine runs batches) says so by declaring, on its
config class, ``WORKER_SWITCH``: the name of the boolean config field that turns that work on. ``serve --no-worker``
turns it off (an API-only server), ``worker`` turns it on, and ``import-llama-stack`` turns it off while it writes;
none of them needs to know any provider by name.
"""

from __future__ import annotations

from typing import Any

from .api import Api
from .config import RunConfig
from .errors import LlamaBatchesError
from .registry import ProviderRegistry, default_registry

__all__ = ["WORKER_SWITCH", "with_execution", "works_in_background"]

WORKER_SWITCH = "WORKER_SWITCH"
"""The class attribute of a provider config naming its background-work switch (e.g. ``"execute"``)."""


def _switch(config_class: Any) -> str | None:
    switch = getattr(config_class, WORKER_SWITCH, None)
    return switch if isinstance(switch, str) else None


def works_in_background(config_class: Any) -> bool:
    """Whether providers configured by ``config_class`` run work of their own (they declare ``WORKER_SWITCH``)."""
    return _switch(config_class) is not None


def with_execution(config: RunConfig, execute: bool | None, registry: ProviderRegistry | None = None) -> RunConfig:
    """``config`` with every background-working provider's switch set to ``execute``; ``None`` leaves each as the
    config says. Providers the registry does not know are left alone (building the stack reports them)."""
    if execute is None:
        return config
    known = registry if registry is not None else default_registry()
    for api_name, entries in config.providers.items():
        try:
            api = Api(api_name)
        except ValueError:
            continue
        for entry in entries:
            try:
                switch = _switch(known.get(api, entry.provider_type).config_class)
            except LlamaBatchesError:
                continue
            if switch is not None:
                entry.config[switch] = execute
    return config
