"""What the bench sends: the kind of text an editor sends to each service.

Autocomplete gets the code before the cursor, cut mid-statement as Continue cuts it; chat gets
the questions a developer asks about code; search gets questions about a code base. The lists
are fixed and cycled in order so two runs send the same requests and can be compared.
"""

from __future__ import annotations

from collections.abc import Sequence

# The seed's autocomplete budget: Continue's tab completions ask for short continuations.
AUTOCOMPLETE_MAX_TOKENS = 64
CHAT_MAX_TOKENS = 128
SEARCH_TOP_K = 5

AUTOCOMPLETE_PREFIXES: tuple[str, ...] = (
    "import json\nfrom pathlib import Path\n\n\ndef load_config(path: Path) -> dict:\n"
    '    """Read a JSON config file, returning an empty dict when it is missing."""\n'
    "    if not path.exists():\n        return {}\n    with path.open() as fh:\n        return ",
    "def binary_search(items: list[int], target: int) -> int:\n    lo, hi = 0, len(items) - 1\n"
    "    while lo <= hi:\n        mid = (lo + hi) // 2\n        if items[mid] == target:\n"
    "            return mid\n        if items[mid] < target:\n            ",
    "class LRUCache:\n    def __init__(self, capacity: int) -> None:\n        self.capacity = capacity\n"
    "        self.data: OrderedDict[str, object] = OrderedDict()\n\n"
    "    def get(self, key: str) -> object | None:\n        if key not in self.data:\n"
    "            return None\n        self.data.move_to_end(key)\n        ",
    "export async function fetchUser(id: string): Promise<User> {\n"
    "  const res = await fetch(`/api/users/${id}`);\n  if (!res.ok) {\n    throw new Error(",
    'package main\n\nimport (\n\t"fmt"\n\t"os"\n)\n\nfunc main() {\n\tif len(os.Args) < 2 {\n'
    '\t\tfmt.Fprintln(os.Stderr, "usage: greet NAME")\n\t\tos.Exit(2)\n\t}\n\t',
    "fn parse_port(s: &str) -> Result<u16, String> {\n    s.parse::<u16>()\n        .map_err(",
    "SELECT u.id, u.email, COUNT(o.id) AS orders\nFROM users u\nLEFT JOIN orders o ON o.user_id = u.id\n"
    "WHERE u.created_at >= NOW() - INTERVAL '30 days'\n",
    "    - name: Install the vLLM package into its virtual environment\n      ansible.builtin.pip:\n"
    '        name: "{{ vllm_package }}=={{ vllm_version }}"\n        virtualenv: ',
    '#!/usr/bin/env bash\nset -euo pipefail\n\nfor host in "$@"; do\n  if ! ping -c1 -W1 "$host" '
    '>/dev/null; then\n    echo "$host is down" >&2\n',
    'import pytest\n\n\n@pytest.fixture\ndef client(tmp_path):\n    app = create_app(tmp_path / "db.sqlite")\n'
    "    with app.test_client() as c:\n        yield c\n\n\ndef test_login_rejects_bad_password(client):\n    ",
)

CHAT_PROMPTS: tuple[str, ...] = (
    "Explain what this function does and suggest a clearer name:\n\n```python\ndef f(xs):\n"
    "    return [x for x in xs if x % 2 == 0 and x > 10]\n```",
    "Write a Python function that reads a CSV file and returns the rows as dictionaries, "
    "skipping blank lines. Include type hints.",
    "Why does this JavaScript print 3 three times, and how do I fix it?\n\n```js\n"
    "for (var i = 0; i < 3; i++) { setTimeout(() => console.log(i), 0); }\n```",
    "Review this SQL for performance problems:\n\n```sql\nSELECT * FROM orders WHERE "
    "DATE(created_at) = '2024-01-01' ORDER BY total DESC;\n```",
    "How do I write a systemd unit that restarts a service on failure, but at most 5 times a minute?",
    "Refactor this Go code to return an error instead of calling log.Fatal:\n\n```go\n"
    "func mustOpen(p string) *os.File {\n\tf, err := os.Open(p)\n\tif err != nil {\n\t\tlog.Fatal(err)\n"
    "\t}\n\treturn f\n}\n```",
)

SEARCH_QUERIES: tuple[str, ...] = (
    "where is the command line parsed",
    "how are errors turned into exit codes",
    "percentile computation for latency samples",
    "parse prometheus metrics text",
    "which port does the chat server listen on",
    "start a vllm server for tests",
    "write a file atomically with a temporary file",
    "read the API key from a file",
)

EMBED_INPUTS: tuple[str, ...] = (
    "def read_lines(path):\n    with open(path) as fh:\n        return [l.rstrip('\\n') for l in fh]\n",
    "class Config:\n    host: str = '127.0.0.1'\n    port: int = 8000\n",
    "SELECT count(*) FROM events WHERE kind = 'login' GROUP BY user_id;",
    "async function main() { const r = await fetch(url); return r.json(); }",
)


def pick(items: Sequence[str], i: int) -> str:
    """The i-th request's text: cycles through the list so any request count works."""
    return items[i % len(items)]
