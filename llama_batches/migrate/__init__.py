"""Migrations into llama-batches: ``import_llama_stack`` reads a llama-stack 0.7.3 deployment's batches and files
(SQLite or PostgreSQL, as its run config says) and imports them with their ids (``llama-batches import-llama-stack``).
"""

from __future__ import annotations

from .convert import Unfinished
from .llama_stack import ImportOptions, ImportReport, ItemResult, Outcome, import_llama_stack
from .reader import MigrationError
from .source import LlamaStackSource, read_source

__all__ = [
    "ImportOptions",
    "ImportReport",
    "ItemResult",
    "LlamaStackSource",
    "MigrationError",
    "Outcome",
    "Unfinished",
    "import_llama_stack",
    "read_source",
]
