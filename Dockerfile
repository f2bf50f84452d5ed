# syntax=docker/dockerfile:1
#
# One image for the three Whereabouts services; `command:` chooses one:
#   docker run … whereabouts ingest|presence|notifier
# It also carries the admin CLI and the simulator:
#   docker compose exec notifier whereabouts status
# Settings come from the environment (see `<service> --help`). The image
# holds no config and no secret: mount yours (scripts/first-run.sh writes
# one) and point WHEREABOUTS_CONFIG at it, as compose.yaml does. Without
# one a service serves only the built-in household on loopback, so in a
# container it refuses to start.

# --- build ---------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src

# Dependencies first: this layer is rebuilt only when a manifest or the lock
# file changes, not on every source edit. Stub sources let cargo resolve the
# workspace (all members, with --locked) and compile just the dependencies.
COPY Cargo.toml Cargo.lock ./
COPY shared/Cargo.toml shared/
COPY ingest/Cargo.toml ingest/
COPY presence/Cargo.toml presence/
COPY notifier/Cargo.toml notifier/
COPY simulator/Cargo.toml simulator/
COPY admin/Cargo.toml admin/
COPY tests/Cargo.toml tests/
COPY examples/rust-consumer/Cargo.toml examples/rust-consumer/
RUN set -eux; \
    for crate in shared ingest presence notifier simulator admin tests; do \
        mkdir -p "$crate/src"; echo '' > "$crate/src/lib.rs"; \
    done; \
    mkdir -p tests/src/bin examples/rust-consumer/src; \
    echo 'fn main() {}' > tests/src/bin/service.rs; \
    echo 'fn main() {}' > tests/src/bin/bench.rs; \
    echo 'fn main() {}' > simulator/src/main.rs; \
    echo 'fn main() {}' > admin/src/main.rs; \
    echo 'fn main() {}' > examples/rust-consumer/src/main.rs; \
    cargo build --release --locked -p ingest -p presence -p notifier -p whereabouts-admin -p simulator; \
    rm -rf shared/src ingest/src presence/src notifier/src simulator/src admin/src tests/src \
        examples/rust-consumer/src

# The real sources. `touch` makes them newer than the stubs' build so cargo
# recompiles the workspace crates (COPY keeps the files' own mtimes).
COPY . .
RUN set -eux; \
    find shared ingest presence notifier admin simulator -name '*.rs' -exec touch {} +; \
    cargo build --release --locked --bin ingest --bin presence --bin notifier \
        --bin whereabouts --bin whereabouts-sim; \
    mkdir -p /out; \
    cd target/release; \
    cp ingest presence notifier whereabouts whereabouts-sim /out/

# --- runtime -------------------------------------------------------------------
FROM debian:bookworm-slim

RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    useradd --system --uid 10001 --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin whereabouts

COPY --from=builder /out/ingest /out/presence /out/notifier /out/whereabouts /out/whereabouts-sim /usr/local/bin/

# In a container the services must listen on all interfaces to be reachable
# (their defaults are loopback). Each service reads only its own variable.
ENV INGEST_HTTP_ADDR=0.0.0.0:8081 \
    PRESENCE_HTTP_ADDR=0.0.0.0:8082 \
    NOTIFIER_HTTP_ADDR=0.0.0.0:8080 \
    LOG_FORMAT=json \
    RUST_LOG=info

USER whereabouts
# notifier (API, board), ingest (HTTP mode), presence (metrics only).
EXPOSE 8080 8081 8082
# No HEALTHCHECK here: the port depends on the service, and slim has no curl.
# compose.yaml probes /readyz per service with bash's /dev/tcp.

# Without a command: list the settings of one service.
CMD ["ingest", "--help"]
