"""The ingress: OpenAI-compatible HTTP and gRPC, admission, replica choice, the site router."""
