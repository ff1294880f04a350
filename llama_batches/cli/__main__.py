"""``python -m llama_batches.cli``: the ``llama-batches`` command."""

from __future__ import annotations

from .main import main

main()
