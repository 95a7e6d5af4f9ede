# nephos as a container: a release build in a Rust image, then a small Debian runtime that
# runs as a non-root user, keeps its data in the /data volume and reports its health through
# `nephos healthcheck` (slim images have no curl). Every option is a NEPHOS_* variable.
#
#   docker build -t nephos .
#   docker run -p 8777:8777 -v nephos-data:/data nephos
#
# The build stage runs scripts/container/build.sh, the same script the test suite runs.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN scripts/container/build.sh /out

FROM debian:bookworm-slim
# CA certificates: HTTPS object stores (--storage-url s3://…) are verified against the system's.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin nephos \
    && mkdir -p /data \
    && chown nephos:nephos /data
COPY --from=build /out/nephos /usr/local/bin/nephos
ENV NEPHOS_LISTEN=0.0.0.0:8777 \
    NEPHOS_DATA_DIR=/data \
    NEPHOS_LOG=info,sqlx=warn
USER nephos
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8777
HEALTHCHECK --interval=10s --timeout=3s --start-period=3s --retries=3 CMD ["nephos", "healthcheck"]
ENTRYPOINT ["nephos"]
CMD ["serve"]
