"""A minimal OpenAI-compatible streaming chat endpoint over the mistral.rs Python package.

The `mistralrs` wheel ships the engine but not its HTTP server, so `cargo xtask bench` serves
it through this shim to put it under the same HTTP load generator as llama-server and ours:
`POST /v1/chat/completions` (streamed, greedy) and `GET /health`. Every request is handed to
one shared `Runner`; mistral.rs batches concurrent requests itself (`--max-seqs`).

usage: mistralrs_server.py --model GGUF --port N [--max-seqs N] [--threads N]
"""

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = argparse.ArgumentParser()
args.add_argument("--model", required=True)
args.add_argument("--port", type=int, required=True)
args.add_argument("--max-seqs", type=int, default=32)
args.add_argument("--threads", type=int, default=2)
args = args.parse_args()

# mistral.rs computes on rayon's global pool; it must be sized before the module loads.
os.environ["RAYON_NUM_THREADS"] = str(args.threads)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import mistralrs  # noqa: E402

runner = mistralrs.Runner(
    which=mistralrs.Which.GGUF(
        quantized_model_id=os.path.dirname(os.path.abspath(args.model)),
        quantized_filename=os.path.basename(args.model),
    ),
    max_seqs=args.max_seqs,
    token_source="none",
    no_paged_attn=True,
)


# `Runner` is borrowed mutably while it accepts a request ("Already borrowed" from a second
# thread): submissions take turns; the streams themselves run concurrently.
submit = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *_):
        pass

    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        request = mistralrs.ChatCompletionRequest(
            model="default",
            messages=body["messages"],
            max_tokens=body.get("max_tokens"),
            temperature=body.get("temperature"),
            ignore_eos=bool(body.get("ignore_eos")),
            stream=True,
        )
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        with submit:
            stream = runner.send_chat_completion_request(request)
        for chunk in stream:
            event = {
                "choices": [
                    {"index": 0, "delta": {"content": c.delta.content or ""}}
                    for c in chunk.choices
                ]
            }
            if chunk.usage is not None:
                event["usage"] = {"completion_tokens": chunk.usage.completion_tokens}
            self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")


print(f"mistral.rs shim on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
