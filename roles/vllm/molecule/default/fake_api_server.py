"""Stand-in for vllm.entrypoints.openai.api_server (the light scenario installs no vLLM).

Parses the flags the role passes, binds --host/--port, checks the key from VLLM_API_KEY on /v1,
and answers /health, /metrics, /v1/completions and /v1/embeddings (384 zeros, the MiniLM size the
fleet tests plan for). It generates nothing real.
"""
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = sys.argv[1:]
opt = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
json.loads(opt["--custom-histogram-buckets"])  # the real server refuses bad JSON too
KEY = os.environ["VLLM_API_KEY"]
NAME = opt["--served-model-name"]


class Handler(BaseHTTPRequestHandler):
    def reply(self, status, body):
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        if not isinstance(body, str):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self.reply(200, "")
        elif self.path == "/metrics":
            self.reply(200, f'stand_in_served{{model_name="{NAME}"}} 1\n')
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self):
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            self.reply(401, {"error": "Unauthorized"})
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        with open(os.path.join(os.environ["HOME"], "requests.log"), "a") as log:
            log.write(json.dumps({"path": self.path, "model": body.get("model")}) + "\n")
        if self.path == "/v1/embeddings":
            self.reply(200, {"model": body.get("model"), "data": [{"index": 0, "embedding": [0.0] * 384}]})
        else:
            self.reply(200, {"model": body.get("model"), "choices": [{"text": " stand-in"}]})


ThreadingHTTPServer((opt["--host"], int(opt["--port"])), Handler).serve_forever()
