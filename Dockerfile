# The container worker: `jobctl worker --container` with the project's registry (functions/kinds), for
# kinds that need more than a Lambda gives. Multi-stage: the build stage has the toolchain; the runtime
# image is distroless (glibc, CA roots, no shell), ~30 MB, and runs as a non-root user.
#
#   docker build -t jobkit-worker .        (arm64 hosts; --platform linux/arm64 elsewhere, for Fargate ARM64)
#   docker run --rm -e JOBKIT_TABLE=... -e JOBKIT_QUEUE_URL=... -e JOBKIT_CONTAINER_QUEUE_URL=... \
#     jobkit-worker worker --container --healthz 127.0.0.1:8080
#
# template.yaml runs it on ECS Fargate when its ContainerImage parameter names the pushed image.

FROM rust:1.88-bookworm AS build
# aws-lc-sys (TLS) builds its C sources with cmake.
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p jobctl \
 && install -D target/release/jobctl /out/jobctl

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/jobctl /usr/local/bin/jobctl
USER nonroot:nonroot
# JSON logs to stdout; SIGTERM drains (--drain-timeout), then releases running jobs to other workers.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/jobctl"]
CMD ["worker", "--container", "--healthz", "127.0.0.1:8080"]
