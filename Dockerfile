# The z2m operator. Multi-stage: build a wheel, install it into a clean slim
# image, run as a non-root user with no shell tools it does not need.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY sample_app ./sample_app
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin z2m
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/z2m-*.whl && rm -rf /wheels
USER 10001
EXPOSE 8080 9090
ENTRYPOINT ["z2m"]
CMD ["run"]
