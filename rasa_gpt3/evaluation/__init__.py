"""`rasa-gpt3 evaluate`: the fine-tuned model against the bot's own NLU pipeline, on the same data, as numbers.

For every shot count k (examples per intent; `all` = the whole training split) and repeat, both sides are trained
on the same examples and asked about the same test messages: the baseline through Rasa's own `train_nlu` and a
loaded Rasa model (`Agent.parse_message`, as `rasa test nlu` does), the fine-tuned side through `export_task`,
`ensure_fine_tuned` and the serving call of `rasa_gpt3.inference` that the NLU component uses. The report has
accuracy, macro-F1 and per-intent precision/recall/F1 (Rasa's `intent_report.json` shape, computed by Rasa's own
report code), out-of-scope handling, latency p50/p95 per message, API calls, tokens and cost.

`rasa-gpt3 evaluate --models A,B[,C]` fine-tunes nothing: it asks existing intent models, the model in use among
them, and the baseline about the same held-out messages and says of each model whether it is at least as good as
the model in use (`comparison`, whose docstring states the rule and why).

The package (a module imports only modules named before it): `results` (the vocabulary: the two sides, `all`, file
names, `Prediction`), `samples` (test split and k-shot samples), `metrics`, `threshold` (the FallbackClassifier
threshold to recommend), `baseline` (the bot's own pipeline through Rasa), `finetuned` (export, fine-tune, serving
calls), `report` (tables, summary, plots, the files), `runner` (`run_evaluation`, what the CLI calls), `candidates`
(the models `--models` names, their backends and label codecs) and `comparison` (`run_comparison`, what `--models`
calls).

Decisions (the issue is silent on these):
- Test set: a stratified, seeded hold-out per (full) intent with export's `stratified_split` (an intent with a
  single example stays in training); or `--test-file`, and then all of the project's NLU data is the training pool.
- k-shot sampling: per full intent (each `faq/ask_x` counts as its own class) a seeded permutation per repeat,
  of which the first k are taken, so a repeat's 10-shot set is part of its 30-shot set and the curve compares like
  with like. An intent with fewer than k training examples gives all it has. `all` runs once: repeating it would
  train on the same data again.
- Baseline pipeline: `--baseline`, else the project's config.yml, with its policies dropped. Components that cannot
  run here and do not decide intents are dropped and named in the report (a Duckling extractor whose server does not
  answer, spaCy/MITIE entity extractors when the library or model is missing), and so are rasa_gpt3's own
  components (they are the other side). When a component that shapes the intent decision cannot run (a spaCy
  tokenizer or featurizer without spaCy, ...) or no intent classifier is left, the baseline is Rasa's default
  pipeline and the report says why. No config.yml at all also means Rasa's default pipeline.
- Predictions are read as `rasa test nlu` reads them: a FallbackClassifier prediction is undone so the top intent
  counts. Whether the bot would have fallen back is recorded per message with one rule for both sides: the
  FallbackClassifier threshold and ambiguity threshold of the baseline config (else of the project's config.yml).
- Out-of-scope: when the data has an out-of-scope intent (`out_of_scope`, `oos`, or `--out-of-scope-intent`), a
  message counts as rejected when it is predicted as that intent or falls back; the report has out-of-scope
  recall/precision and the share of in-scope messages wrongly rejected.
- The fine-tuned side never touches the project's own registry or local backend state: its models are recorded in
  `<out>/gpt3_models.yml` and, offline, trained by a local backend in `<out>/.rasa_gpt3/local`, so re-running with
  the same `--out` reuses every model trained on identical data. Fine-tunes use all k-shot examples for training
  (no validation split), like the baseline.
- Serving calls go through the NLU component's bounded call (`inference.classify`, one retry) with the cache off,
  so every test message costs one real call, and with the request timeout of the settings (30 s) rather than the
  component's 2 s budget, so latency is measured rather than cut off; the report counts the calls slower than that
  budget (inside the bot they would have fallen back). The circuit breaker is off too: five failed calls in a row
  stop the evaluation with the reason. A single failed call counts as a fallback prediction, as in the bot.
- Tokens are the usage the API returns when it returns one, else counted with the base model's tokenizer; cost uses
  the base model's prices (`base_models.yml`), also offline, where it is what the same run would cost on OpenAI.
"""
