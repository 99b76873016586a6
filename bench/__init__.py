"""Load generation against the HTTP API and user-facing serving metrics."""
