# syntax=docker/dockerfile:1
# pgparent: per-parent-tag session metrics and a runaway-group watchdog for PostgreSQL.
#   docker build -t pgparent .                          (--build-arg EXTRAS=azure: Entra ID tokens; aws, gcp alike)
#   docker run -e PGPARENT_DSN='host=... user=pgparent password=... sslmode=require' -p 10187:10187 pgparent
# The base is an argument so that a build without registry access can use a locally made Debian image with python3
# and python3-venv (tests/deliverables/test_docker.py makes one with debootstrap).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# Builder: a wheel of this tree, installed with its dependencies into a self-contained virtualenv. EXTRAS names the
# cloud token providers to include (docs/credentials.md), e.g. --build-arg EXTRAS=azure or EXTRAS=azure,aws,gcp.
FROM ${BASE_IMAGE} AS build
ARG EXTRAS=""
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN python3 -m venv /opt/pgparent \
    && /opt/pgparent/bin/pip wheel --no-cache-dir --disable-pip-version-check --no-deps --wheel-dir /tmp/wheels . \
    && set -- /tmp/wheels/pgparent-*.whl \
    && /opt/pgparent/bin/pip install --no-cache-dir --disable-pip-version-check "$1${EXTRAS:+[$EXTRAS]}" \
    && /opt/pgparent/bin/pip uninstall --yes --disable-pip-version-check pip setuptools

# Runtime: the same base, the virtualenv, the example rules, and an unprivileged user. No compiler, no pip.
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="pgparent" \
      org.opencontainers.image.description="Per-parent-tag session metrics and a runaway-group watchdog for PostgreSQL" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid/gid, so that Kubernetes' runAsNonRoot can check it and volumes can be prepared for it.
RUN groupadd --gid 10187 pgparent \
    && useradd --uid 10187 --gid pgparent --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin pgparent
COPY --from=build /opt/pgparent /opt/pgparent
COPY rules.yaml /etc/pgparent/rules.yaml
ENV PATH=/opt/pgparent/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10187:10187
EXPOSE 10187
# Liveness without curl: the poll loop is ticking. A database outage is pgparent_up 0, not an unhealthy container.
# It probes the default port: if you change --web.listen-address, override the health check too.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:10187/healthz', timeout=4)"]
# pgparent runs as PID 1 and installs its own SIGTERM/SIGINT handlers (exporter/run/daemon.py): it exits 0 within 2 s of
# `docker stop`, so no init shim is needed.
STOPSIGNAL SIGTERM
ENTRYPOINT ["pgparent"]
CMD ["run", "--config.file", "/etc/pgparent/rules.yaml"]
