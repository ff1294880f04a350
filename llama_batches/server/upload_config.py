"""``server.uploads``: how ``POST /v1/files`` reads an upload (pydantic only, so ``llama_batches.config`` can import it
without importing the app).

```yaml
server:
  uploads:
    spool_dir: /var/tmp/llama-batches   # where a file sent before its `purpose` waits; default: the system temp dir
    jsonl_check: first_line             # or every_line: refuse a batch upload when any line is not a JSON object
```
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["UploadsConfig"]


class UploadsConfig(BaseModel):
    """``server.uploads``."""

    model_config = ConfigDict(extra="forbid")

    spool_dir: str | None = Field(
        default=None,
        description=(
            "Directory where the file part of an upload waits when it comes before the `purpose` field (the openai "
            "SDK sends `purpose` first): at most the files provider's size limit, in an unnamed temporary file, so "
            "nothing is left behind even by a crash. Default: the system's temporary directory; set it to a disk "
            "(not a tmpfs) when large uploads may come file-first."
        ),
    )
    jsonl_check: Literal["first_line", "every_line"] = Field(
        default="first_line",
        description=(
            "What an upload of purpose `batch` must pass to be stored: `first_line` (as OpenAI and llama-stack: a "
            "file that is empty or whose first line is not a JSON object is a 400; every other line is checked when "
            "a batch runs, each bad line reported with its number) or `every_line` (every line must be a JSON object "
            "at upload)."
        ),
    )
