"""``server.uploads``: how ``POST /v1/files`` reads an upload (pydantic only, so ``llama_batches.config`` can import it
without importing the app).

```yaml
server:
  uploads:
    spool_dir: /var/tmp/llama-batches   # where a file sent before its `purpose` waits; default: the system temp dir
    jsonl_check: first_line             # or every_line: refuse a batch upload when any line is not a JSON object
    max_concurrent_uploads: 8           # uploads received at once, server-wide; another is a 429 with Retry-After
    idle_timeout_s: 60                  # a request body silent this long is a 408: the upload stops, its spool is freed
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
    max_concurrent_uploads: int = Field(
        default=8,
        ge=1,
        description=(
            "How many uploads (`POST /v1/files`) the server receives at once, whatever their principals: another is a "
            "429 `too_many_uploads` with Retry-After, before its body is read. Each upload may hold up to the files "
            "provider's size limit in the spool (file-first) or in the provider, so this bounds what uploads hold "
            "together."
        ),
    )
    idle_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description=(
            "How long a request body (an upload's, or any other's) may send nothing while more of it is due: then "
            "the request is a 408 `request_timeout`, the connection is closed, and an upload stops (its spool is "
            "freed, the provider keeps nothing)."
        ),
    )
