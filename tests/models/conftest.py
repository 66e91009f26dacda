"""Markers that transformers' test battery applies (see test_transformers_common.py), declared for --strict-markers."""

from __future__ import annotations

BATTERY_MARKERS = (
    "accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test", "torch_compile_test",
    "is_agent_test", "is_expert_parallel_test", "is_fsdp_test", "is_pipeline_test", "is_staging_test",
    "is_tensor_parallel_test", "is_training_test", "order",
)


def pytest_configure(config) -> None:
    for name in BATTERY_MARKERS:
        config.addinivalue_line("markers", f"{name}: used by transformers' common test battery")
