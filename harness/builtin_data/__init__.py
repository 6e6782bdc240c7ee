"""Package data: the embedded smoke-scale preference set (see make_safety_smoke.py)."""
