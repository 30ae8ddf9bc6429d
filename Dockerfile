# lfsserve container image: `docker run -p 8080:8080 -v lfsdata:/data IMAGE` serves /data on port
# 8080 (anonymous clients may read). See "Deployment" in README.md for users, TLS and nginx.
#
# Configuration: LFSSERVE_* environment variables (LFSSERVE_ANONYMOUS, LFSSERVE_BASE_URL,
# LFSSERVE_AUTH_HTPASSWD, ...) and/or a TOML file: mount it and set LFSSERVE_CONFIG to its path.
# The entrypoint is the `lfsserve` command, so admin commands run as
# `docker exec CONTAINER lfsserve repos` or `docker run --rm -v lfsdata:/data IMAGE verify`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/lfsserve/bin:$PATH

# A fixed uid/gid, so a bind-mounted data directory can be chowned to it (10001:10001).
RUN groupadd --gid 10001 lfsserve \
 && useradd --uid 10001 --gid lfsserve --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin lfsserve \
 && mkdir /data && chown lfsserve:lfsserve /data

# Dependencies first, from the pinned and hashed lock (no resolution at build time).
COPY requirements.lock /tmp/requirements.lock
RUN python -m venv /opt/lfsserve \
 && pip install --require-hashes --no-deps -r /tmp/requirements.lock \
 && rm /tmp/requirements.lock

COPY pyproject.toml README.md /tmp/src/
COPY lfsserve /tmp/src/lfsserve
RUN pip install --no-deps --no-build-isolation --no-index /tmp/src \
 && rm -rf /tmp/src \
 && lfsserve --version

ENV LFSSERVE_HOST=0.0.0.0 \
    LFSSERVE_PORT=8080 \
    LFSSERVE_ROOT=/data

USER lfsserve:lfsserve
WORKDIR /data
VOLUME /data
EXPOSE 8080

# No curl in the slim image; Python's urllib is enough. Exit status 1 unless /healthz says 200.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LFSSERVE_PORT', '8080'), timeout=4)"]

# Exec form: lfsserve is PID 1 and gets SIGTERM itself; it stops accepting, lets requests in
# flight finish for up to server.shutdown_grace seconds (30), and exits 0. Give `docker stop`
# at least that long (`--stop-timeout 40`, compose `stop_grace_period: 40s`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["lfsserve"]
CMD ["serve"]
