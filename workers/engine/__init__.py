"""The chunked-prefill LLM engine (Sarathi-Serve's stall-free batching over a paged KV cache)."""
