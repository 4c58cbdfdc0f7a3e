# Two images from one file: `web` serves a store (no torch), `precompute` fills one and runs the
# live worker (torch, GPU when present). Both install exact, hashed versions from requirements/*.lock
# (scripts/lock) and run as the unprivileged user `microscope`, not root.
#
# The base image by digest, not by tag (a tag moves; a digest names one image for good). Re-resolve it
# to pick up the base image's security fixes: scripts/pin-base-image (needs docker or crane).
ARG BASE_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
FROM ${BASE_IMAGE} AS web
RUN useradd --system --uid 10001 --user-group --create-home microscope \
    && mkdir -p /data && chown microscope:microscope /data
WORKDIR /srv/microscope
COPY requirements/web.lock requirements/web.lock
RUN pip install --no-cache-dir --require-hashes -r requirements/web.lock
COPY pyproject.toml README.md ./
COPY app app
COPY templates templates
COPY static static
RUN pip install --no-cache-dir --no-deps .
ENV MICROSCOPE_DATA=/data
USER microscope
EXPOSE 8000
CMD ["microscope", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]

FROM web AS precompute
USER root
# The CUDA build of torch; it runs on the CPU too where no GPU is given to the container. Ray too, so
# the image serves as a Ray cluster's node image (KubeRay) for `precompute ... --ray`.
COPY requirements/precompute.lock requirements/precompute.lock
RUN pip install --no-cache-dir --require-hashes -r requirements/precompute.lock
COPY precompute precompute
RUN pip install --no-cache-dir --no-deps .
ENV MICROSCOPE_WEIGHTS=/weights MICROSCOPE_IMAGES=/images
USER microscope
CMD ["microscope", "precompute", "all"]
