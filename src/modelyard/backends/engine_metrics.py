"""Read an engine's own load from its Prometheus ``/metrics`` text.

vLLM, SGLang and llama.cpp's server publish how many requests they run and
queue and how full their KV cache is, each under its own names. This maps them
onto one plain shape: ``{"running", "waiting", "kv_usage"}`` (kv_usage in 0..1).
"""

from __future__ import annotations

# metric name -> field; several series of one name (per model, per engine) are summed, KV usage takes the largest.
ENGINE_METRICS: dict[str, str] = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_usage",
    "vllm:gpu_cache_usage_perc": "kv_usage",  # vLLM before 0.10
    "sglang:num_running_reqs": "running",
    "sglang:num_queue_reqs": "waiting",
    "sglang:token_usage": "kv_usage",
    "llamacpp:requests_processing": "running",
    "llamacpp:requests_deferred": "waiting",
    "llamacpp:kv_cache_usage_ratio": "kv_usage",
}


def parse_engine_load(text: str) -> dict[str, float] | None:
    """The load fields found in a metrics page; None when it publishes none of them."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value_part = line.rpartition(" ")
        name = name_part.split("{", 1)[0].strip()
        field = ENGINE_METRICS.get(name)
        if field is None:
            continue
        try:
            value = float(value_part)
        except ValueError:
            continue
        if value != value:  # NaN
            continue
        found[field] = max(found.get(field, 0.0), value) if field == "kv_usage" else found.get(field, 0.0) + value
    if not found:
        return None
    return {"running": found.get("running", 0.0), "waiting": found.get("waiting", 0.0), "kv_usage": min(1.0, max(0.0, found.get("kv_usage", 0.0)))}
