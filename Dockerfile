# syntax=docker/dockerfile:1
# llm-pipeline as a Livepeer runner: a container that behaves as `livepeer/ai-runner:llm`
# (port 8000, MODEL_ID, /models as the model cache, the same environment variables).
#
#   docker build -t llm-pipeline:cpu .                      # CPU image (the default target)
#   docker build -t llm-pipeline:cuda --target cuda .       # CUDA image (NVIDIA driver on the host;
#                                                           # --build-arg CUDA_COMPUTE_CAP=89 for L4)
#   docker run -p 8000:8000 -v ~/.lpData/models:/models \
#       -e MODEL_ID=HuggingFaceTB/SmolLM2-135M-Instruct llm-pipeline:cpu
#
# The program and llama.cpp's libraries are built with `cargo xtask dist` into one folder
# (bin/llm-pipeline, lib/llm-pipeline/*.so) and copied to /usr/local: the program finds its
# libraries through its run path, and llama.cpp picks the CPU kernels for the CPU it runs on.

ARG RUST_VERSION=1.90
ARG CUDA_VERSION=12.8.1

# --- CPU build -------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build-cpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake clang libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo xtask dist --out /dist

# --- CUDA build ------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu22.04 AS build-cuda
ARG RUST_VERSION
# The GPU generation to compile kernels for (90: H100/H200; 89: L4/L40; 80: A100): there is
# no GPU in the build to ask. The driver's libcuda is linked against the toolkit's stub and
# provided by the host at run time.
ARG CUDA_COMPUTE_CAP=90
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} CMAKE_CUDA_ARCHITECTURES=${CUDA_COMPUTE_CAP} \
    LIBRARY_PATH=/usr/local/cuda/lib64/stubs
# No cmake from apt: Ubuntu 22.04's (3.22) predates this CUDA; without one on PATH the xtask
# installs the pinned PyPI cmake wheel, as on a fresh development machine.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl build-essential \
        clang libclang-dev pkg-config python3 python3-pip \
    && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain ${RUST_VERSION}
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/root/.cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo xtask dist --features cuda --out /dist

# --- CUDA runtime ----------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu22.04 AS cuda
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build-cuda /dist/ /usr/local/
COPY docker/entrypoint.sh /usr/local/bin/llm-pipeline-entrypoint
ENV MODEL_DIR=/models HUGGINGFACE_HUB_CACHE=/models HOST=0.0.0.0 PORT=8000 \
    CUDA_DEVICE_ORDER=PCI_BUS_ID
VOLUME /models
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/llm-pipeline-entrypoint"]

# --- CPU runtime (last: the default target) --------------------------------------------------
FROM debian:bookworm-slim AS cpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build-cpu /dist/ /usr/local/
COPY docker/entrypoint.sh /usr/local/bin/llm-pipeline-entrypoint
ENV MODEL_DIR=/models HUGGINGFACE_HUB_CACHE=/models HOST=0.0.0.0 PORT=8000
VOLUME /models
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/llm-pipeline-entrypoint"]
