# syntax=docker/dockerfile:1
# spool's container image: a release build on Debian 12, run on distroless
# (glibc, libgcc and CA certificates, no shell, no package manager) as a
# non-root numeric user.
#
#   docker build -t spool .
#   docker run --rm -e SPOOL_DATABASE_URL=postgres://... -e SPOOL_LISTEN=0.0.0.0:4000 spool

# The build toolchain is the declared minimum (Cargo.toml's rust-version),
# so building the image also checks that it is true.
FROM docker.io/library/rust:1.88-slim-bookworm AS build
WORKDIR /src
# Only what the binary is built from: the manifest, the lock file, the code,
# the migrations it embeds, and examples/ because Cargo.toml declares its
# example targets (they are not built).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY sql ./sql
COPY examples ./examples
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin spool \
    && cp target/release/spool /spool

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /spool /usr/local/bin/spool
# No Postgres in the image: a database URL is required (SPOOL_DATABASE_URL
# or SPOOL_DATABASE_URL_FILE), and spool exits 2 naming it when there is
# none instead of trying to start an embedded Postgres.
ENV SPOOL_DATABASE__EMBEDDED=false
# A spool.toml here is read when present (the default path is relative);
# without one, defaults and SPOOL_* variables make the configuration.
WORKDIR /etc/spool
# distroless' "nonroot" user, by number so that runAsNonRoot can check it.
USER 65532:65532
EXPOSE 4000 4001
ENTRYPOINT ["/usr/local/bin/spool"]
CMD ["run"]
