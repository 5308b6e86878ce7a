"""Running it: Prometheus metrics, health endpoints, log hygiene, the recommended vLLM command."""
