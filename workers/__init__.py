"""Worker pools: the chunked-prefill engine, the vision encoder and their Ray Serve deployments."""
