"""The model-call layer: OpenAI-compatible calls with retries, quotas, circuit breaking,
structured answers, costs and metrics. Used by the worker and anything else that calls models.

Import from the modules (`models.client`, `models.tokens`, ...): the package itself loads
nothing, so the simulator's `models.tokens` does not pull in the openai SDK it never calls.
"""
