"""Drives a KServe v2 / Triton-compatible server with the real `tritonclient`.

Run as:

    python tests/serve/triton_client.py --protocol {http-binary,http-json,grpc} \
        --url HOST:PORT --model NAME [--version V] [--timeout-s 60] \
        [--ssl [--ca FILE]] [--token TOKEN] REQUESTS.json

REQUESTS.json is a JSON list of requests; each request is a list of inputs
{"name": str, "datatype": "BYTES"|"FP32"|..., "shape": [ints], "data": [flat]}
(BYTES data are str, sent utf-8 encoded).

Protocols:
  http-binary  tritonclient.http, binary input tensors, no outputs named (so the
               client sets the request parameter binary_data_output=true).
  http-json    tritonclient.http, JSON input tensors, every output of the model
               (from its metadata) requested with binary_data=False.
  grpc         tritonclient.grpc (raw_input_contents).

Prints one JSON document to stdout:
  {"live": bool, "ready": bool, "model_ready": bool, "metadata": {...} | null,
   "results": [{"outputs": {name: {"datatype", "shape", "data"}}}
               | {"error": str, "status": str | null}, ...]}
plus "probe_errors" / "metadata_error" ({"error", "status"}) only when a health
or metadata call raised InferenceServerException. Per-request
InferenceServerExceptions are reported in "results"; anything else propagates
(non-zero exit).
"""

import argparse
import json
import math
import sys

import numpy as np
from tritonclient.utils import InferenceServerException, triton_to_np_dtype


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Send KServe v2 inference requests with the real tritonclient."
    )
    p.add_argument(
        "--protocol", required=True, choices=["http-binary", "http-json", "grpc"]
    )
    p.add_argument("--url", required=True, help="HOST:PORT (no scheme)")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--version", default="", help="model version (default: server's)")
    p.add_argument(
        "--timeout-s", type=float, default=60.0, help="client timeouts in seconds"
    )
    p.add_argument("--ssl", action="store_true", help="use https / gRPC over TLS")
    p.add_argument("--ca", default=None, help="PEM CA file to verify the server with")
    p.add_argument(
        "--token", default=None, help="sends 'Authorization: Bearer TOKEN'"
    )
    p.add_argument("requests", metavar="REQUESTS.json", help="JSON list of requests")
    args = p.parse_args(argv)
    if args.ca is not None and not args.ssl:
        p.error("--ca needs --ssl")
    return args


def error_json(e):
    msg = e.message()
    return {"error": msg if msg is not None else str(e), "status": e.status()}


def to_numpy(inp):
    datatype = inp["datatype"]
    shape = [int(d) for d in inp["shape"]]
    data = inp["data"]
    if datatype == "BYTES":
        arr = np.array([str(s).encode("utf-8") for s in data], dtype=np.object_)
    else:
        arr = np.array(data, dtype=triton_to_np_dtype(datatype))
    return arr.reshape(shape)


def json_value(v):
    # Keep the document strict JSON (serde_json rejects NaN / Infinity).
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    return v


def flat_data(arr, datatype):
    if arr is None:
        return None
    values = np.asarray(arr).reshape(-1).tolist()
    if datatype == "BYTES":
        return [
            v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)
            for v in values
        ]
    return [json_value(v) for v in values]


def grpc_metadata_dict(md):
    def tensors(ts):
        return [
            {"name": t.name, "datatype": t.datatype, "shape": [int(d) for d in t.shape]}
            for t in ts
        ]

    return {
        "name": md.name,
        "versions": list(md.versions),
        "platform": md.platform,
        "inputs": tensors(md.inputs),
        "outputs": tensors(md.outputs),
    }


def run_http(args, requests, headers):
    import tritonclient.http as httpclient

    kwargs = {
        "connection_timeout": args.timeout_s,
        "network_timeout": args.timeout_s,
    }
    if args.ssl:
        import gevent.ssl

        kwargs["ssl"] = True
        # geventhttpclient calls create_default_context(cafile=ca_certs):
        # certificate and host name are verified.
        kwargs["ssl_context_factory"] = gevent.ssl.create_default_context
        kwargs["insecure"] = False
        if args.ca is not None:
            kwargs["ssl_options"] = {"ca_certs": args.ca}
    client = httpclient.InferenceServerClient(args.url, **kwargs)
    binary = args.protocol == "http-binary"
    doc = {}
    probe_errors = {}
    try:
        for key, call in (
            ("live", lambda: client.is_server_live(headers=headers)),
            ("ready", lambda: client.is_server_ready(headers=headers)),
            (
                "model_ready",
                lambda: client.is_model_ready(
                    args.model, args.version, headers=headers
                ),
            ),
        ):
            try:
                doc[key] = bool(call())
            except InferenceServerException as e:
                doc[key] = False
                probe_errors[key] = error_json(e)
        if probe_errors:
            doc["probe_errors"] = probe_errors
        try:
            metadata = client.get_model_metadata(
                args.model, args.version, headers=headers
            )
        except InferenceServerException as e:
            metadata = None
            doc["metadata_error"] = error_json(e)
        doc["metadata"] = metadata

        requested = None
        if not binary and metadata is not None:
            requested = [
                httpclient.InferRequestedOutput(o["name"], binary_data=False)
                for o in metadata.get("outputs", [])
            ]

        results = []
        for req in requests:
            try:
                inputs = []
                for inp in req:
                    arr = to_numpy(inp)
                    ii = httpclient.InferInput(inp["name"], list(arr.shape), inp["datatype"])
                    ii.set_data_from_numpy(arr, binary_data=binary)
                    inputs.append(ii)
                result = client.infer(
                    args.model,
                    inputs,
                    model_version=args.version,
                    outputs=requested,
                    headers=headers,
                )
                outputs = {}
                for out in result.get_response().get("outputs", []):
                    name = out["name"]
                    outputs[name] = {
                        "datatype": out["datatype"],
                        "shape": [int(d) for d in out["shape"]],
                        "data": flat_data(result.as_numpy(name), out["datatype"]),
                    }
                results.append({"outputs": outputs})
            except InferenceServerException as e:
                results.append(error_json(e))
        doc["results"] = results
    finally:
        client.close()
    return doc


def run_grpc(args, requests, headers):
    import tritonclient.grpc as grpcclient

    kwargs = {}
    if args.ssl:
        kwargs["ssl"] = True
        kwargs["root_certificates"] = args.ca
    client = grpcclient.InferenceServerClient(args.url, **kwargs)
    t = args.timeout_s
    doc = {}
    probe_errors = {}
    try:
        for key, call in (
            ("live", lambda: client.is_server_live(headers=headers, client_timeout=t)),
            (
                "ready",
                lambda: client.is_server_ready(headers=headers, client_timeout=t),
            ),
            (
                "model_ready",
                lambda: client.is_model_ready(
                    args.model, args.version, headers=headers, client_timeout=t
                ),
            ),
        ):
            try:
                doc[key] = bool(call())
            except InferenceServerException as e:
                doc[key] = False
                probe_errors[key] = error_json(e)
        if probe_errors:
            doc["probe_errors"] = probe_errors
        try:
            md = client.get_model_metadata(
                args.model, args.version, headers=headers, client_timeout=t
            )
            doc["metadata"] = grpc_metadata_dict(md)
        except InferenceServerException as e:
            doc["metadata"] = None
            doc["metadata_error"] = error_json(e)

        results = []
        for req in requests:
            try:
                inputs = []
                for inp in req:
                    arr = to_numpy(inp)
                    ii = grpcclient.InferInput(inp["name"], list(arr.shape), inp["datatype"])
                    ii.set_data_from_numpy(arr)
                    inputs.append(ii)
                result = client.infer(
                    args.model,
                    inputs,
                    model_version=args.version,
                    headers=headers,
                    client_timeout=t,
                )
                outputs = {}
                for out in result.get_response().outputs:
                    outputs[out.name] = {
                        "datatype": out.datatype,
                        "shape": [int(d) for d in out.shape],
                        "data": flat_data(result.as_numpy(out.name), out.datatype),
                    }
                results.append({"outputs": outputs})
            except InferenceServerException as e:
                results.append(error_json(e))
        doc["results"] = results
    finally:
        client.close()
    return doc


def main(argv=None):
    args = parse_args(argv)
    with open(args.requests, encoding="utf-8") as f:
        requests = json.load(f)
    if not isinstance(requests, list) or not all(isinstance(r, list) for r in requests):
        raise SystemExit("REQUESTS.json must be a JSON list of lists of inputs")

    headers = None
    if args.token is not None:
        # gRPC metadata keys must be lower case; HTTP header names are case-blind.
        key = "authorization" if args.protocol == "grpc" else "Authorization"
        headers = {key: "Bearer " + args.token}

    if args.protocol == "grpc":
        doc = run_grpc(args, requests, headers)
    else:
        doc = run_http(args, requests, headers)
    json.dump(doc, sys.stdout, allow_nan=False)
    sys.stdout.write("\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
