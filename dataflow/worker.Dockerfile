# Dataflow worker image (SDK harness container) for beam-image-labeller: Beam's own SDK image with this package and
# every dependency pinned in dataflow/requirements.lock installed at build time, so workers run no pip at boot and
# every worker is identical. Build from the repository root and launch with --sdk_container_image (README, "Dataflow"):
#   docker build -f dataflow/worker.Dockerfile -t "$REGION-docker.pkg.dev/$PROJECT/beam/image-labeller-worker:0.1.0" .
#   docker push "$REGION-docker.pkg.dev/$PROJECT/beam/image-labeller-worker:0.1.0"
# BEAM_VERSION must be the apache-beam pinned in the lock, which is the launcher's (tests/test_dataflow.py checks).
ARG BEAM_VERSION=2.77.0
FROM apache/beam_python3.11_sdk:${BEAM_VERSION}

COPY dataflow/requirements.lock /opt/beam-image-labeller/requirements.lock
RUN pip install --no-cache-dir -r /opt/beam-image-labeller/requirements.lock

COPY setup.py pyproject.toml README.md /opt/beam-image-labeller/src/
COPY beam_pipeline /opt/beam-image-labeller/src/beam_pipeline
# The package alone (its dependencies are the lock's); pip check fails the build on any conflict with what the SDK
# image already held, and the probe fails it if a worker could not open gs:// or s3:// URIs.
RUN pip install --no-cache-dir --no-deps /opt/beam-image-labeller/src \
    && pip check \
    && python -c "import fsspec, beam_pipeline.pipeline; fsspec.filesystem('gs'); fsspec.filesystem('s3')"
# The SDK image's entry point (/opt/apache/beam/boot) is kept: Dataflow starts it on every worker.
