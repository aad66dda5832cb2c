# Image for `flyball worker` and `flyball api` (see compose.yaml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml setup.py README.md ./
COPY flyball ./flyball
COPY schemas ./schemas
COPY producers ./producers
COPY stream_processors ./stream_processors
COPY control_plane ./control_plane
# gcc only for the build of the detectors' C extension (setup.py), removed in the same layer
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-cache-dir '.[server]' \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* \
    && useradd -m flyball && mkdir -p /var/lib/flyball && chown flyball /var/lib/flyball
USER flyball
EXPOSE 8000
CMD ["flyball", "up"]
