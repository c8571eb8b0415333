# Strata gateway image: runs `strata serve` on the embedded default, data under /data.
FROM python:3.11-slim
WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY gateway ./gateway
COPY chunker ./chunker
COPY dedup ./dedup
COPY crypto ./crypto
COPY tiering ./tiering
COPY bench ./bench
RUN pip install --no-cache-dir . && useradd --system --home /data strata && mkdir -p /data && chown strata /data
USER strata
VOLUME /data
EXPOSE 9000
ENTRYPOINT ["strata", "serve", "--host", "0.0.0.0", "--port", "9000", "--data-dir", "/data"]
