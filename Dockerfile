# The triggerer binary with every provider (file, kafka, sqs, msgqueue).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin triggerer

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/triggerer /usr/local/bin/triggerer
ENTRYPOINT ["triggerer"]
