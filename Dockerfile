# syntax=docker/dockerfile:1
# keycast-tw: the NIP-46 signer daemon as a container.
#   docker build -t keycast-tw .                       # plain image (docker compose, any runtime)
#   docker build --target cloudrun -t keycast-tw-run . # + Litestream restore/replicate (Cloud Run)
# No secret is baked in: the master key (or KMS settings) and the database live in volumes or
# come from the runtime's secret store. See docs/operations.md.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG LITESTREAM_IMAGE=litestream/litestream:0.3.13

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY setup.py pyproject.toml README.md ./
COPY keycast_tw ./keycast_tw
COPY twisted ./twisted
# The plugin cache is written now, because site-packages is read-only at run time.
RUN python -m venv /opt/keycast/venv \
 && /opt/keycast/venv/bin/pip install . \
 && /opt/keycast/venv/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

FROM ${PYTHON_IMAGE} AS runtime
# curl for the health check, sqlite3 for the runbook's integrity check.
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl sqlite3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 keycast \
 && useradd --system --uid 10001 --gid keycast --home-dir /data --shell /usr/sbin/nologin keycast \
 && install -d -o keycast -g keycast -m 0700 /data /keys
COPY --from=build /opt/keycast/venv /opt/keycast/venv
COPY deployment/healthcheck.sh deployment/check-signer.sh deployment/health-endpoint.sh \
     deployment/backup-db.sh /usr/local/bin/
ENV PATH=/opt/keycast/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DATABASE_PATH=/data/keycast.db \
    MASTER_KEY_PATH=/keys/master.key \
    PORT=8080
WORKDIR /data
USER 10001:10001
VOLUME ["/data", "/keys"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/usr/local/bin/healthcheck.sh", "signer"]
# twistd itself is PID 1 (exec form, no shell): it receives SIGTERM, drains and exits 0. No
# pidfile: the container runtime tracks the process. Admin commands replace the command, e.g.
# `docker run --rm -v ... keycast-tw keycast key list`.
STOPSIGNAL SIGTERM
CMD ["twistd", "--nodaemon", "--pidfile=", "--umask=0077", "--logger=keycast_tw.logs.observer", "keycast"]

FROM ${LITESTREAM_IMAGE} AS litestream

# Cloud Run: Litestream restores the database from its replica before the daemon starts, then
# runs the daemon as its child (-exec) and replicates every change while it runs. On SIGTERM
# Litestream forwards the signal, waits for the daemon to exit and syncs a last time.
FROM runtime AS cloudrun
COPY --from=litestream /usr/local/bin/litestream /usr/local/bin/litestream
COPY deployment/litestream.yml /etc/litestream.yml
COPY deployment/cloudrun/run-with-litestream.sh /usr/local/bin/run-with-litestream.sh
ENV KEYCAST_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/run-with-litestream.sh"]

# The default target: the plain image.
FROM runtime
