# Image for `flyball worker` and `flyball api` (see compose.yaml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY flyball ./flyball
COPY schemas ./schemas
COPY producers ./producers
COPY stream_processors ./stream_processors
COPY control_plane ./control_plane
RUN pip install --no-cache-dir '.[server]' \
    && useradd -m flyball && mkdir -p /var/lib/flyball && chown flyball /var/lib/flyball
USER flyball
EXPOSE 8000
CMD ["flyball", "up"]
