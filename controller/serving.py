"""Start Ray Serve's HTTP and gRPC proxies and deploy Pavana's application on them.

The gRPC proxy serves the services registered here: Pavana's own (`router/proto/pavana.proto`)
and the standard health service. Ray Serve routes every method of a registered service to the
ingress deployment's method of the same name, so `grpc.health.v1.Health/Check` is answered by
`Ingress.Check`: health says whether the pools answer, not merely whether the proxy is up.
A request without the `application` metadata (a Kubernetes gRPC probe sends none) reaches the
application as long as it is the only one running, which is how `pavana up` deploys it.

Server reflection (`grpc.reflection.v1alpha.ServerReflection`) is answered by the proxy itself,
from the descriptors the servicer functions' modules load there: `grpcurl -plaintext HOST:PORT
list` and `describe` work without `pavana.proto`. Pavana's service registration
(`router.proto.lenient`) also carries a failed stream's rich error status
(`router/grpc_errors.py`) through the proxy.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.config import HTTPOptions, gRPCOptions

from cluster.spec import ClusterSpec
from controller.app import APP_NAME, build_app

GRPC_SERVICER_FUNCTIONS = [
    "router.proto.lenient.add_PavanaServicer_to_server",
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
]


def grpc_options(spec: ClusterSpec) -> gRPCOptions:
    # Reflection is Ray Serve's default; said here because clients rely on it.
    return gRPCOptions(port=spec.grpc_port, grpc_servicer_functions=list(GRPC_SERVICER_FUNCTIONS), enable_reflection=True)


def start_serving(
    spec: ClusterSpec,
    *,
    http_host: str = "127.0.0.1",
    app_name: str = APP_NAME,
    route_prefix: str = "/",
    **build_options: Any,
) -> Any:
    """Start the proxies (once per Ray cluster) and deploy the spec's application; returns the
    ingress's deployment handle once every replica is up. `build_options` go to `build_app`."""
    serve.start(http_options=HTTPOptions(host=http_host, port=spec.http_port), grpc_options=grpc_options(spec))
    return serve.run(build_app(spec, **build_options), name=app_name, route_prefix=route_prefix)
