# heatreplay: one image for every role (web, live-worker, sink, migrate, topics,
# retention, simulate); docker-compose.yml picks the role with the command.

# --- the web UI's vendor assets (Leaflet): npm is needed at build time only ---------
FROM node:20-slim AS web-assets
WORKDIR /src/web
COPY web/package.json web/package-lock.json web/vendor.sh ./
# --ignore-scripts: the postinstall hook runs vendor.sh, which we run explicitly next
RUN npm ci --no-audit --no-fund --ignore-scripts && sh vendor.sh

# --- the app ------------------------------------------------------------------------
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 10001 heatreplay \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin heatreplay
WORKDIR /app

# Dependency layer: only pyproject.toml invalidates it. Empty packages stand in for the
# source so `pip install .` resolves and installs every dependency (all have wheels for
# linux x86_64/arm64: no compiler in the image); source edits reuse this layer.
COPY pyproject.toml ./
RUN mkdir app replay \
    && touch app/__init__.py replay/__init__.py \
    && pip install . \
    && pip uninstall -y heatreplay \
    && rm -rf app replay build ./*.egg-info

# The source, then the project itself without dependencies. Editable, because the app
# finds web/, migrations/ and alembic.ini next to its package directory.
COPY alembic.ini ./
COPY migrations ./migrations
COPY replay ./replay
COPY app ./app
COPY web ./web
COPY --from=web-assets /src/web/vendor ./web/vendor
RUN pip install --no-deps -e . && rm -rf build

USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["heatreplay"]
CMD ["web"]
