"""The local backend's HTTP API: the OpenAI routes the official SDK uses, served by aiohttp (app.py builds it).

Routes (all under /v1), one module per resource: files.py (upload, list, retrieve, content, delete), jobs.py
(fine_tuning/jobs: create, list, retrieve, cancel, events, checkpoints), models.py (list, retrieve, delete) and
completions.py (chat/completions with logprobs/top_logprobs and stream; completions with integer logprobs and
stream), whose shared request reading lives in completion_request.py. Errors use OpenAI's shape
`{"error": {"message", "type", "param", "code"}}` and status codes (errors.py); nothing ever answers with a
traceback. Outside /v1 (app.py): GET /health, GET /_local/stats (request counts), POST /_local/stats/reset,
POST /_local/faults.
"""
