"""Provider types that llama-stack defines. A run config naming one that llama-batches does not implement is
skipped with a log line (so an existing llama-stack config runs as is); any other unknown name is an error."""

from __future__ import annotations

__all__ = ["LLAMA_STACK_PROVIDER_TYPES"]

LLAMA_STACK_PROVIDER_TYPES = frozenset(
    {
        "inline::basic", "inline::braintrust", "inline::builtin", "inline::chromadb", "inline::code-scanner",
        "inline::docling", "inline::faiss", "inline::file-search", "inline::llama-guard", "inline::llm-as-judge",
        "inline::localfs", "inline::meta-reference", "inline::milvus", "inline::prompt-guard", "inline::pypdf",
        "inline::qdrant", "inline::reference", "inline::rag-runtime", "inline::sentence-transformers",
        "inline::sqlite-vec", "inline::sqlite_vec", "inline::transformers", "inline::vllm",
        "inline::localfs-datasetio", "remote::anthropic", "remote::azure", "remote::bedrock",
        "remote::bing-search", "remote::brave-search", "remote::cerebras", "remote::chromadb",
        "remote::databricks", "remote::elasticsearch", "remote::fireworks", "remote::gemini", "remote::groq",
        "remote::hf::endpoint", "remote::hf::serverless", "remote::huggingface", "remote::infinispan",
        "remote::llama-cpp-server", "remote::llama-openai-compat", "remote::milvus",
        "remote::model-context-protocol", "remote::nvidia", "remote::oci", "remote::ollama", "remote::openai",
        "remote::passthrough", "remote::pgvector", "remote::qdrant", "remote::runpod", "remote::s3",
        "remote::sambanova", "remote::tavily-search", "remote::tgi", "remote::together", "remote::vertexai",
        "remote::vllm", "remote::watsonx", "remote::weaviate", "remote::wolfram-alpha",
    }
)  # fmt: skip
