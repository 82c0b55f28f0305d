# The z2m operator (`z2m run`). Build from the repo root: hack/images.sh build, or
#   docker build -t z2m/operator .
# Offline builds pass --build-arg BASE=localhost/z2m/debian:bookworm. Debian's Python
# 3.11; the build stage pip-installs the project into a venv, the final stage copies
# the venv and runs it as uid 10001.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
# python3 brings ca-certificates, which rewrites the CA bundle; a bundle the base carries
# (the offline base: this machine's, for its proxy) is kept as a local CA, so pip trusts it.
RUN if [ -s /etc/ssl/certs/ca-certificates.crt ]; then mkdir -p /usr/local/share/ca-certificates \
      && cp /etc/ssl/certs/ca-certificates.crt /usr/local/share/ca-certificates/z2m-base.crt; fi \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY sample_app ./sample_app
RUN /opt/venv/bin/pip install --no-cache-dir . \
 && /opt/venv/bin/pip uninstall -y -q pip setuptools

FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin z2m
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001
EXPOSE 8080 9090
ENTRYPOINT ["z2m"]
CMD ["run"]
