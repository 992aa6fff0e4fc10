"""The HTTP gateway (`llmflow gateway`): producers and consumers that are no Kafka clients
publish events and read results over HTTP.

`settings` (environment), `auth` (bearer tokens -> tenants), `publish` (validate a body,
produce with backpressure), `results` (a bounded index of recent results, read without a
consumer group), `stream` (server-sent events with resumable ids), `openapi`, `metrics`,
`app` (the aiohttp routes and the process's life)."""
