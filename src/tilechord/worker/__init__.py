"""The worker side: the Celery app factory, typed task specs, the tasks, the canvas and the store.

Nothing here is imported by ``import tilechord``: the tasks are defined when an app is
made (:func:`tilechord.worker.app.create_app`), and ``celery -A tilechord worker`` makes
one through ``tilechord.app``.
"""
