# The worker image: tilechord with Flower, run as an unprivileged user.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . && useradd --create-home tilechord
USER tilechord

# Overridden per service in docker-compose.yml; this is the worker.
CMD ["celery", "-A", "tilechord", "worker", "--loglevel", "INFO", "-Q", "tilechord"]
