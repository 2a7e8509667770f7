"""The pieces of ``scripts/bench.py``: test images and the Pillow baseline, timing and the
results table, the cases, task message sizes, CPU accounting, and the phase breakdown
read from the Celery task events of real jobs.

Nothing here re-runs a step of tilechord's data path by hand: tilechord is measured only
through its public client, the task events its workers send and Redis's own counters.
"""
