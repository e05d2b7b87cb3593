"""Drives `outpost serve`'s OpenAI endpoints with the real `openai` client.

Run as:

    python tests/serve/openai_client.py --base-url http://HOST:PORT/v1 \
        [--api-key KEY] [--max-retries N] REQUESTS.json

REQUESTS.json is a JSON list; each item is {"call": "chat" | "completions",
"args": {...}} with the keyword arguments of
client.chat.completions.create / client.completions.create (`stream`
included). Prints one JSON document to stdout:
  {"models": [ids], "results": [result, ...]}
where a streamed result is {"chunks": [content or text delta, ...],
"finish_reason": str, "usage": {...} | null, "ids": [chunk ids]} and a
whole one is {"content": str, "finish_reason": str, "usage": {...}};
an openai.APIError is {"error": str, "status": int | null}.
"""

import argparse
import json
import sys

import openai


def run(client, item):
    call, args = item["call"], item["args"]
    create = client.chat.completions.create if call == "chat" else client.completions.create
    try:
        reply = create(**args)
        if not args.get("stream"):
            choice = reply.choices[0]
            content = choice.message.content if call == "chat" else choice.text
            return {
                "content": content,
                "finish_reason": choice.finish_reason,
                "usage": reply.usage.model_dump() if reply.usage else None,
                "object": reply.object,
            }
        chunks, finish, usage, ids = [], None, None, set()
        for chunk in reply:
            ids.add(chunk.id)
            if chunk.usage is not None:
                usage = chunk.usage.model_dump()
            for choice in chunk.choices:
                piece = choice.delta.content if call == "chat" else choice.text
                if piece:
                    chunks.append(piece)
                if choice.finish_reason is not None:
                    finish = choice.finish_reason
        return {"chunks": chunks, "finish_reason": finish, "usage": usage, "ids": sorted(ids)}
    except openai.APIError as e:
        return {"error": str(e), "status": getattr(e, "status_code", None)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", default="none")
    # The client's own default is 2; tests pass it where retries matter.
    parser.add_argument("--max-retries", type=int, default=0)
    parser.add_argument("requests")
    args = parser.parse_args()
    with open(args.requests) as f:
        items = json.load(f)
    client = openai.OpenAI(
        base_url=args.base_url, api_key=args.api_key, max_retries=args.max_retries, timeout=120
    )
    models = [m.id for m in client.models.list()]
    results = [run(client, item) for item in items]
    json.dump({"models": models, "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
