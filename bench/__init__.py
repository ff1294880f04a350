"""Benchmarks that print figures against stated goals (see bench/README.md); run from a checkout."""
