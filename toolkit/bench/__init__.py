"""Measure the deployed stack against the seed's SLOs (``toolkit bench``).

Modules, in the order data flows through them:
  endpoints  where to send requests (a saved plan or URLs) and the API key
  workloads  what to send (code prefixes, chat prompts, search queries)
  runner     how to send it (httpx, warm-up, concurrency levels, SSE streaming)
  search     index a code tree into LanceDB with the deployed embedding model; time queries
  metrics    what the server itself counted (vLLM's Prometheus /metrics, before and after)
  stats      percentiles with sample counts (pure)
  slo        the SLO table and pass/fail (pure)
  report     rich tables, JSON, a self-contained HTML latency plot
"""
