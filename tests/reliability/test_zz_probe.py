import time, json, socket
import httpx, grpc, pytest
pytestmark = pytest.mark.ray

def raw_http(port, data, timeout=20):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout) as e:
                return out + f"<{e!r}>".encode()
            if not chunk:
                return out
            out += chunk
            if b"\r\n\r\n" in out and len(out) > 20:
                pass
    finally:
        s.close()

def test_probe(hostile_app, ray_cluster):
    c = httpx.Client(timeout=60)
    r = c.get(f"{hostile_app.root_url}/openapi.json")
    print("openapi", r.status_code, list(r.json().get("paths", {})) if r.status_code == 200 else r.text[:200])
    if r.status_code == 200:
        print(json.dumps(r.json()["paths"]["/v1/completions"])[:600])
    m = hostile_app.model
    for label, body in [("bad", {"model": m, "prompt": "hi", "temperature": 9}), ("valid4", {"model": m, "prompt": "hi", "max_tokens": 4, "temperature": 0}), ("nomax", {"model": m, "prompt": "hi", "ignore_eos": True})]:
        t0 = time.perf_counter()
        for _ in range(10):
            r = c.post(f"{hostile_app.base_url}/completions", json=body, headers=hostile_app.auth)
        print(label, r.status_code, (time.perf_counter() - t0) / 10, r.text[:200])
    port = ray_cluster.http_port
    for label, hdrs in [("100KB", {"X-Big": "a" * 100_000}), ("1MB", {"X-Big": "a" * 1_000_000}), ("500h", {f"X-H{i}": "v" for i in range(500)}), ("5000h", {f"X-H{i}": "v" for i in range(5000)})]:
        t0 = time.perf_counter()
        try:
            r = c.get(f"{hostile_app.base_url}/models", headers={**hdrs, **hostile_app.auth})
            print(label, r.status_code, r.text[:100], time.perf_counter() - t0)
        except Exception as e:
            print(label, "EXC", repr(e)[:200], time.perf_counter() - t0)
    for n in (9 << 20, 64 << 20):
        t0 = time.perf_counter()
        try:
            r = c.post(f"{hostile_app.base_url}/completions", content=b'{"model": "' + b"a" * n + b'"}', headers={**hostile_app.auth, "content-type": "application/json"})
            print("body", n, r.status_code, r.text[:200], time.perf_counter() - t0)
        except Exception as e:
            print("body", n, "EXC", repr(e)[:200], time.perf_counter() - t0)
    ch = grpc.insecure_channel(hostile_app.grpc_address)
    gen = ch.unary_unary("/pavana.v1.Pavana/Generate", request_serializer=None, response_deserializer=None)
    for label, payload in [("garbage", b"\xff\xff\xff\xff\x0f"), ("wrongtype", b"\x12\x05\x00"), ("10MB", b"\x12" + __import__("google.protobuf.internal.encoder", fromlist=["x"])._VarintBytes(10 << 20) + b"a" * (10 << 20))]:
        t0 = time.perf_counter()
        try:
            out = gen(payload, metadata=hostile_app.grpc_metadata, timeout=60)
            print("grpc", label, "OK", out[:100])
        except grpc.RpcError as e:
            print("grpc", label, e.code(), e.details()[:200], time.perf_counter() - t0)
    from router.proto import pavana_pb2 as pb, pavana_pb2_grpc
    stub = pavana_pb2_grpc.PavanaStub(ch)
    print(stub.Generate(pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(max_tokens=2)), metadata=hostile_app.grpc_metadata, timeout=60))
