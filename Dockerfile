# One image for every process in the Procfile: web (default), worker, beat and the release step.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system rekey \
 && useradd --system --gid rekey --home-dir /var/lib/rekey --shell /usr/sbin/nologin rekey \
 && install -d -o rekey -g rekey /var/lib/rekey /var/lib/rekey/audit-checkpoints

# Installed as a package (migrations included), so no source tree is left in the image.
COPY . /tmp/src
RUN pip install "/tmp/src[flower]" && rm -rf /tmp/src

WORKDIR /var/lib/rekey
USER rekey
ENV REKEY_ENV=production \
    REKEY_INSTANCE_DIR=/var/lib/rekey \
    REKEY_BEAT_SCHEDULE=/var/lib/rekey/celerybeat-schedule \
    PORT=8000
EXPOSE 8000

# The Procfile's web line; compose overrides the command for worker, beat and migrate.
# Prometheus multiprocess mode: an empty folder per start, shared by gunicorn's workers (README, Metrics).
ENV PROMETHEUS_MULTIPROC_DIR=/tmp/rekey-prometheus
CMD ["sh", "-c", "rm -rf \"$PROMETHEUS_MULTIPROC_DIR\" && mkdir -p \"$PROMETHEUS_MULTIPROC_DIR\" && exec gunicorn --bind 0.0.0.0:${PORT} --access-logfile - --config python:app.gunicorn_conf 'app:create_app()'"]
