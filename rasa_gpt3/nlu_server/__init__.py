"""Non-blocking NLU for Rasa 3.6: the pipeline runs in an NLU server of ours, which Rasa core reaches over HTTP.

The problem. Rasa 3.6 runs the NLU graph synchronously inside Sanic's event loop (`MessageProcessor.parse_message`
calls `graph_runner.run` without awaiting anything), so while GPT3IntentClassifier waits for the model, every other
conversation of that Rasa process waits too. With 20 conversations at once and a model answering in 200 ms, a
message waited 3.7 s at the median and 8.8 s at p95 (issue 12); the component's `timeout` bounds one call, not the
queue in front of it.

The mechanism. `rasa-gpt3 nlu serve` (server.py) loads the same trained Rasa model and serves Rasa's
`POST /model/parse`, running the NLU pipeline on a thread pool: the GPT components spend a message's time waiting on
a socket, which releases the GIL, so many messages overlap there. Every message is answered within a budget (the
GPT components' timeouts added up), with `nlu_fallback` when the pipeline is late. Rasa core sends its messages
there through `endpoints.yml` `nlu: url:`, the way Rasa documents for an external NLU server; its client
(RasaNLUHttpInterpreter) awaits aiohttp, so core's event loop keeps serving other conversations meanwhile.

Why this one:
- Rasa 3.6 has no supported way to run the graph off the event loop: no setting, and its plugin manager loads only
  `rasa_plus`. Everything else would patch Rasa.
- Running the pipeline on a thread pool inside Rasa core (patching MessageProcessor.parse_message) was measured
  too (`benchmarks/concurrency.py --compare-in-process`, README "Deployment"): p95 1.6x one message's latency, as
  the NLU server, with the model in a process of its own, 2.1x, as the NLU server, with the embedded stand-in
  model. It would replace a Rasa method in every bot that installs rasa_gpt3, run all of a bot's
  components (its own custom ones too) on threads inside core, and put the NLU's CPU under the same GIL as the
  dialogue handling. With the NLU server, Rasa's normal path stays stock Rasa with a documented endpoint, and the
  NLU side can be restarted, sized (`--threads`) and replicated on its own.
- More Sanic workers (SANIC_WORKERS=N with Redis, rasa_gpt3.lock_store) add throughput (4.5, 8.8, 11.8 messages/s
  for 1, 2, 4 workers), but each worker still blocks while its message waits: at most N model calls are in flight,
  and p95 stayed 17-21x one message's latency. Workers and the NLU server combine (2 workers + NLU server: 2.0x).
- Only the failure path needs a patch of Rasa: its interpreter has no timeout (aiohttp's 300 s) and turns errors
  into an empty parse; interpreter.py bounds it and falls back to `nlu_fallback` with the text kept.

Modules: server.py (the server), command.py (`rasa-gpt3 nlu serve`, `python -m rasa_gpt3.nlu_server`),
interpreter.py (Rasa core's side), fallback.py (the parse a message gets when NLU could not answer in time).
"""
