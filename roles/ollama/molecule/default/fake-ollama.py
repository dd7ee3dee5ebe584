#!/usr/bin/env python3
"""Stand-in for the Ollama binary, built into a release archive by the molecule scenario.

The real binary is on no registry reachable here. This one answers the API calls the role makes
(/api/version, /api/tags, /api/pull) on OLLAMA_HOST and keeps pulled model names in OLLAMA_MODELS.
It serves no model and computes no embedding.
"""
import json
import os
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434")
STATE = os.path.join(os.environ.get("OLLAMA_MODELS", "/tmp"), "fake-models.json")


def models():
    try:
        with open(STATE) as f:
            return json.load(f)
    except OSError:
        return []


class Handler(BaseHTTPRequestHandler):
    def reply(self, body, status=200):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/api/version":
            self.reply({"version": "0.0.0-fake"})
        elif self.path == "/api/tags":
            self.reply({"models": [{"name": m + ":latest"} for m in models()]})
        else:
            self.reply({"error": "not found"}, 404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path == "/api/pull":
            pulled = sorted(set(models()) | {body["model"]})
            with open(STATE, "w") as f:
                json.dump(pulled, f)
            self.reply({"status": "success"})
        else:
            self.reply({"error": "not found"}, 404)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        host, port = HOST.rsplit(":", 1)
        ThreadingHTTPServer((host, int(port)), Handler).serve_forever()
    elif sys.argv[1:2] == ["pull"]:
        req = urllib.request.Request(f"http://{HOST}/api/pull", data=json.dumps({"model": sys.argv[2]}).encode(),
                                     headers={"Content-Type": "application/json"})
        print(json.load(urllib.request.urlopen(req))["status"])
    else:
        sys.exit(f"fake ollama: unsupported arguments {sys.argv[1:]}")
