# The kvmmu-server image: `docker build -t kvmmu .` (or `docker compose build`).
#
# Offline build: when the build context has wheels in build/wheels/ (the
# project's runtime dependencies and its build backend, for the base image's
# Python and platform), pip installs only from them (--no-index); otherwise it
# uses the package index. scripts/container-smoke.sh builds this way. (No
# `# syntax=` line: BuildKit would fetch that frontend from a registry.)
#
# The image is secure by default: it listens on 0.0.0.0:50051, which the
# server refuses without TLS or a token unless KVMMU_INSECURE=true says the
# network is trusted (docker-compose.yml sets it and publishes the port on
# the host's loopback only; docker-compose.secure.yml adds a token and TLS).

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
# .dockerignore lets through only the sources, pyproject.toml, README.md and build/wheels.
COPY . /src
RUN set -eu; \
    if ls /src/build/wheels/*.whl >/dev/null 2>&1; then \
        echo "kvmmu image: offline build: installing only from build/wheels"; \
        set -- --no-index --find-links /src/build/wheels; \
    else \
        echo "kvmmu image: installing from the package index"; \
        set --; \
    fi; \
    python3 -m venv /opt/kvmmu; \
    /opt/kvmmu/bin/pip install --quiet "$@" --upgrade pip; \
    /opt/kvmmu/bin/pip install --quiet "$@" /src; \
    /opt/kvmmu/bin/kvmmu --version; \
    /opt/kvmmu/bin/kvmmu-server --help >/dev/null; \
    /opt/kvmmu/bin/pip uninstall --quiet --yes pip setuptools wheel

FROM ${BASE_IMAGE}
# The server's user; a bind-mounted state dir or secret must be readable (the
# state dir writable) by this uid.
ARG KVMMU_UID=10001
RUN groupadd --system --gid "${KVMMU_UID}" kvmmu \
    && useradd --system --uid "${KVMMU_UID}" --gid kvmmu --home-dir /var/lib/kvmmu \
        --no-create-home --shell /usr/sbin/nologin kvmmu \
    && mkdir -p /var/lib/kvmmu \
    && chown kvmmu:kvmmu /var/lib/kvmmu \
    && chmod 0700 /var/lib/kvmmu
COPY --from=build /opt/kvmmu /opt/kvmmu
# PATH in full: a base image imported from a root file system has none.
ENV PATH=/opt/kvmmu/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    KVMMU_LISTEN=0.0.0.0:50051 \
    KVMMU_STATE_DIR=/var/lib/kvmmu
# Durable state (SQLite journal and VM snapshots): keep it on a volume.
VOLUME ["/var/lib/kvmmu"]
EXPOSE 50051
USER kvmmu
WORKDIR /var/lib/kvmmu
# SIGTERM: health turns NOT_SERVING, in-flight calls get --grace seconds (10),
# VM snapshots are written, exit 0. Give `docker stop` more than the grace
# (`--time 30`; compose: stop_grace_period).
STOPSIGNAL SIGTERM
# The project's own probe against the standard gRPC health service, on the
# port of KVMMU_LISTEN. kvmmu health exits 3 when it cannot connect; a health
# check must exit 1 for "unhealthy".
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD kvmmu --server "127.0.0.1:${KVMMU_LISTEN##*:}" --timeout 3 health || exit 1
ENTRYPOINT ["kvmmu-server"]
