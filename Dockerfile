# syntax=docker/dockerfile:1
#
# coffer: multi-stage build. The final image holds the binary and the default configuration
# only, runs as a non-root user, and keeps its data in the /var/lib/coffer volume.
#
#   docker build -t coffer .
#   docker run -p 8080:8080 -e COFFER_SECRET_KEY=$(docker run --rm coffer gen-secret) \
#              -v coffer-data:/var/lib/coffer coffer
#
# Base images are pinned to exact versions; pin them by digest too (`@sha256:...`) in your
# registry mirror for fully reproducible builds.

FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/hot_paths.rs \
    && cargo build --release --locked \
    && rm -rf src benches
COPY config.toml ./
COPY data ./data
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin coffer \
    && mkdir -p /out/storage \
    && cp target/release/coffer /out/coffer \
    && cp config.toml /out/config.toml

FROM gcr.io/distroless/cc-debian12:nonroot
# distroless "nonroot" is uid/gid 65532; the data volume is created owned by it.
COPY --from=build --chown=65532:65532 /out/storage /var/lib/coffer
COPY --from=build /out/coffer /usr/local/bin/coffer
COPY --from=build /out/config.toml /etc/coffer/config.toml
ENV COFFER_CONFIG=/etc/coffer/config.toml \
    COFFER_STORAGE__ROOT=/var/lib/coffer \
    COFFER_SERVER__BIND=0.0.0.0:8080
USER 65532:65532
EXPOSE 8080
VOLUME ["/var/lib/coffer"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/coffer", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/coffer"]
CMD ["serve"]
