"""Pavana's gRPC API: `pavana.proto` and its generated stubs (`generate.sh` regenerates them)."""
