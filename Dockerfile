# Two images from one file: `web` serves a store (no torch), `precompute` fills one and runs the
# live worker (torch, GPU when present).
FROM python:3.11-slim AS web
WORKDIR /srv/microscope
COPY pyproject.toml README.md ./
COPY app app
COPY templates templates
COPY static static
RUN pip install --no-cache-dir ".[postgres,redis,s3]"
ENV MICROSCOPE_DATA=/data
EXPOSE 8000
CMD ["microscope", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]

FROM web AS precompute
COPY precompute precompute
# The CUDA build of torch; it runs on the CPU too where no GPU is given to the container. Ray too, so
# the image serves as a Ray cluster's node image (KubeRay) for `precompute ... --ray`.
RUN pip install --no-cache-dir ".[precompute,postgres,redis,s3,ray]"
ENV MICROSCOPE_WEIGHTS=/weights MICROSCOPE_IMAGES=/images
CMD ["microscope", "precompute", "all"]
