"""The reliability suite (`make chaos`, `python -m dev.chaos`): a real broker, the model
SIMULATOR and `llmflow worker` processes, broken on purpose while events flow.

Scenarios (`scenarios.py`): kill -9 of workers, scaling 1 -> 3 -> 1, a broker SIGKILL,
a model-endpoint outage, hung model calls, poison records, a long soak and bounded
in-flight work under a slow model. For each, `ledger.py` counts what went in and what came
out (lost, duplicated before and after the SDK's de-duplication, calls paid twice, time to
drain); `rig.py` runs and breaks the processes; `report.py` prints the one table.
"""
