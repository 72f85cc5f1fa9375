"""Serving: interactive chat and the OpenAI-compatible server.

chat.py           `thinktune chat`: a chat session over a loaded model
server.py         `thinktune serve`: uvicorn, SIGTERM drains; BackgroundServer for tests and benchmarks
app.py            the OpenAI-compatible routes (/v1/chat/completions, /v1/completions, /v1/models, /health, /metrics)
protocol.py       request schemas (pydantic → 400), response and stream-chunk builders, OpenAI-shaped errors
middleware.py     API key (401), body size (413), draining (503), request metrics
engine.py         the dynamic batcher: bounded queue (429), one worker thread owns the model, per-row stops
sampling.py       per-row temperature / top-k / top-p / repetition penalty / seed inside one generate()
detokenize.py     tokens → text one at a time; stop strings
thinking.py       streamed <think> split into reasoning_content and content
reply.py          generated text → reasoning_content, content and tool_calls (whole, or as stream deltas)
adapters.py       base model + named LoRA adapters in one PeftModel
metrics.py        Prometheus metrics of one server
vllm_backend.py   `--backend vllm`: vLLM's OpenAI server with the same config
run_dir.py        what a run directory offers for serving
deploy.py         `thinktune deploy`: Dockerfile, serve.yaml, Kubernetes manifests
"""
