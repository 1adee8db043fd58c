# ankisync's image: the API and the worker (./run.sh) in one container, as an
# unprivileged user, with its data in the volume /data. README: Install with Docker.
#
#   docker compose build                  (or: docker build -t ankisync .)
#
# Behind a TLS-inspecting (corporate) proxy, pip must trust the proxy's CA: give
# the build a PEM bundle that holds it as a BuildKit secret. It is mounted for the
# one RUN that downloads and is never stored in the image:
#
#   DOCKER_BUILDKIT=1 docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt -t ankisync .
#
# BASE_IMAGE: another Debian bookworm image with the same packages (the tests build
# on one made locally with mmdebstrap, having no registry). VERSION: version.py's
# (tests/test_version.py keeps them equal), for the labels.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/ankisync
COPY requirements.txt ./
# Every requirement is a wheel for amd64 and arm64: no compiler. The stamp is the one
# run.sh writes after an install, so that the container's ./run.sh does not install again.
RUN --mount=type=secret,id=ca \
    set -eu; \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python3 -m venv .venv; \
    .venv/bin/pip install --no-cache-dir --disable-pip-version-check --only-binary=:all: \
        -r requirements.txt; \
    .venv/bin/pip uninstall --yes --quiet pip setuptools; \
    cat requirements.txt requirements.txt | sha256sum | cut -d' ' -f1 \
        >.venv/.installed-requirements.txt

FROM ${BASE_IMAGE}
ARG VERSION=1.0.0
LABEL org.opencontainers.image.title="ankisync" \
      org.opencontainers.image.description="HTTP API that turns a word into an Anki cloze card with audio and syncs it" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="AGPL-3.0-or-later"
# python3: the venv's interpreter (the same Debian package as in the build stage);
# espeak-ng: the offline voice; tini: PID 1, passes docker stop's SIGTERM to run.sh
# and reaps the worker's children; ca-certificates: AnkiWeb's and Google's TLS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 espeak-ng tini ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/ankisync
COPY --from=build /opt/ankisync/.venv .venv
COPY . .
# Settings for the container only: data in the volume, the API on every interface
# of the container (publish the port to choose who reaches it: compose.yaml).
ENV ANKISYNC_DATA_DIR=/data \
    ANKISYNC_LISTEN=0.0.0.0:5000 \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1
VOLUME /data
EXPOSE 5000
# 200 only when the API and the worker both run (GET /healthz); the port is the
# one the settings give, from the environment or /data/.env.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/opt/ankisync/.venv/bin/python", "-c", "import config, urllib.request; host, port = config.current().listen; host = {'0.0.0.0': '127.0.0.1', '::': '::1', '': '127.0.0.1'}.get(host, host); urllib.request.urlopen(f'http://[{host}]:{port}/healthz' if ':' in host else f'http://{host}:{port}/healthz', timeout=8)"]
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/ankisync/deploy/docker-entrypoint.sh"]
CMD []
