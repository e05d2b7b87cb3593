"""Concurrent load against a KServe v2 / Triton-compatible HTTP server, with the
real `tritonclient.http`.

Run as:

    python tests/serve/load_client.py --url HOST:PORT --model NAME \
        --input-name text --text "stop the conveyor" --clients 32 --requests 50 \
        [--timeout-s 60]

Starts CLIENTS threads, each with its own tritonclient.http.InferenceServerClient,
each sending REQUESTS inferences of one BYTES [1] input (binary tensors, outputs
returned binary). Prints one JSON document to stdout:

  {"ok": int, "errors": {status_or_message: count},
   "outputs": [distinct outputs seen, each a JSON string of
               {name: {"datatype", "shape", "data"}}, sorted]}

An InferenceServerException counts under its status (e.g. "503"), or its
message when it has none; any other exception under "TypeName: message".
"""

import argparse
import json
import sys
import threading

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Concurrent KServe v2 HTTP load with the real tritonclient."
    )
    p.add_argument("--url", required=True, help="HOST:PORT (no scheme)")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--input-name", required=True, help="name of the BYTES input")
    p.add_argument("--text", required=True, help="the one string sent as input")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients")
    p.add_argument("--requests", type=int, default=50, help="requests per client")
    p.add_argument(
        "--timeout-s", type=float, default=60.0, help="connection/network timeout"
    )
    args = p.parse_args(argv)
    if args.clients < 1 or args.requests < 0:
        p.error("--clients must be >= 1 and --requests >= 0")
    return args


def output_key(result):
    outputs = {}
    for out in result.get_response().get("outputs", []):
        name = out["name"]
        arr = result.as_numpy(name)
        data = None if arr is None else np.asarray(arr).reshape(-1).tolist()
        if data is not None and out["datatype"] == "BYTES":
            data = [
                v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)
                for v in data
            ]
        outputs[name] = {
            "datatype": out["datatype"],
            "shape": [int(d) for d in out["shape"]],
            "data": data,
        }
    return json.dumps(outputs, sort_keys=True)


def worker(args, barrier, lock, totals):
    ok = 0
    errors = {}
    seen = set()

    def count(key):
        errors[key] = errors.get(key, 0) + 1

    client = None
    try:
        # Created in this thread: geventhttpclient binds to the thread's hub.
        client = httpclient.InferenceServerClient(
            args.url,
            connection_timeout=args.timeout_s,
            network_timeout=args.timeout_s,
        )
        arr = np.array([args.text.encode("utf-8")], dtype=np.object_)
        barrier.wait()
        for _ in range(args.requests):
            try:
                inp = httpclient.InferInput(args.input_name, [1], "BYTES")
                inp.set_data_from_numpy(arr, binary_data=True)
                result = client.infer(args.model, [inp])
                seen.add(output_key(result))
                ok += 1
            except InferenceServerException as e:
                status = e.status()
                count(status if status is not None else str(e.message()))
            except Exception as e:  # connection resets, timeouts, ...
                count(f"{type(e).__name__}: {e}")
    except threading.BrokenBarrierError:
        count("BrokenBarrierError")
    except Exception as e:  # client set-up failed: release the other threads
        barrier.abort()
        count(f"{type(e).__name__}: {e}")
    finally:
        if client is not None:
            client.close()
        with lock:
            totals["ok"] += ok
            for k, v in errors.items():
                totals["errors"][k] = totals["errors"].get(k, 0) + v
            totals["outputs"].update(seen)


def main(argv=None):
    args = parse_args(argv)
    barrier = threading.Barrier(args.clients)
    lock = threading.Lock()
    totals = {"ok": 0, "errors": {}, "outputs": set()}
    threads = [
        threading.Thread(target=worker, args=(args, barrier, lock, totals))
        for _ in range(args.clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    doc = {
        "ok": totals["ok"],
        "errors": totals["errors"],
        "outputs": sorted(totals["outputs"]),
    }
    json.dump(doc, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
