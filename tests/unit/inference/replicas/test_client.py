from __future__ import annotations

from streams.inference.replicas.client import root_url, sum_samples

EXPOSITION = """\
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="1",model_name="a b"} 2.0
vllm:num_requests_waiting_by_reason{reason="capacity"} 40.0
vllm:num_requests_running 250
vllm:prefix_cache_hits_total{model_name="m"} 1.5e3
vllm:prefix_cache_hits_created{model_name="m"} 1.7e9
vllm:num_requests_running{engine="1"} not-a-number
"""


def test_sum_samples_sums_label_sets_of_exact_names_only() -> None:
    sums = sum_samples(EXPOSITION, "vllm:num_requests_waiting", "vllm:num_requests_running",
                       "vllm:prefix_cache_hits_total", "vllm:kv_cache_usage_perc")
    assert sums == {"vllm:num_requests_waiting": 5.0, "vllm:num_requests_running": 250.0,
                    "vllm:prefix_cache_hits_total": 1500.0}


def test_root_url_of_an_openai_base() -> None:
    assert root_url("http://replica:8000/v1") == "http://replica:8000"
    assert root_url("http://replica:8000/v1/") == "http://replica:8000"
    assert root_url("https://gw.example/vllm") == "https://gw.example/vllm"  # no /v1: the base is the root


def test_a_harmony_server_that_cannot_compile_the_schema_is_taken_to_lack_structured_output() -> None:
    from streams.inference.replicas.client import _STRUCTURED

    # vLLM 0.32 answers this 400 for a gpt-oss model (Harmony) whose schema it cannot compile
    assert _STRUCTURED.search("Invalid structural tag specification.")
    assert not _STRUCTURED.search("This model's maximum context length is 2048 tokens.")
