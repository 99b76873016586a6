#!/usr/bin/env bash
# Regenerate the Python stubs of pavana.proto (committed, so a checkout needs no protoc).
# Run from anywhere; uses grpcio-tools from the active Python. Protoc runs from the
# repository root with `-I .`, so the generated service module imports
# `router.proto.pavana_pb2` by its package path: Ray Serve's proxy and replicas import it so.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
"${PYTHON:-python}" -m grpc_tools.protoc -I . \
  --python_out=. --grpc_python_out=. --pyi_out=. \
  router/proto/pavana.proto
echo "generated router/proto/pavana_pb2.py, pavana_pb2.pyi, pavana_pb2_grpc.py"
