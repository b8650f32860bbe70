# GPU image: the GPU flavour of scripts/setup_env.sh, the same steps and pins that
# `make gpu-stack` builds and checks (see docs/gpu_stack.md), with one difference: Horovod's
# CUDA kernels are compiled by this base image's CUDA 12.4 nvcc (HOROVOD_CUDA_HOME) instead
# of the pip CUDA 13 compiler, so the image runs on drivers without CUDA 13 support.
#
# Host: an NVIDIA driver with CUDA 12 support, >= 525.60.13 (CUDA 12 minor-version
# compatibility; the CUDA 12.9 / cuDNN 9.28 / NCCL 2.32 libraries are pip packages in the
# image's venv, from tensorflow[and-cuda]), and the NVIDIA Container Toolkit.
# GPUs: compute capability 7.0 or newer (SASS for 7.0-9.0, PTX for newer).
#
#   docker build -t tfconvnets .
#   docker run --gpus all --ipc=host -v /data:/data tfconvnets \
#       mpirun --allow-run-as-root -np 8 --bind-to none python main.py --arch=resnet50 --amp \
#           --data_dir=/data/imagenet/tfrecords --model_dir=/data/ckpt
# (`horovodrun -np 8 python main.py ...` works too.)
FROM nvidia/cuda:12.4.1-devel-ubuntu22.04

# The base image asks the container runtime for a CUDA 12.4 driver; the binaries here need
# any CUDA 12 driver (see above).
ENV NVIDIA_REQUIRE_CUDA="cuda>=12.0" \
    DEBIAN_FRONTEND=noninteractive

# Python 3.11 and a C++ tool chain for the Horovod build; openssh for the Kubernetes MPI
# Operator (examples/kubernetes). NCCL and MPI come from pip (no libnccl2/libnccl-dev:
# the base image holds those packages, and TF's pip NCCL is the one Horovod must use).
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev g++ make cmake git \
        openssh-client openssh-server \
    && mkdir -p /run/sshd \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /workspace/tfconvnets
COPY . .
RUN TFCONVNETS_FLAVOUR=gpu PYTHON=python3.11 HOROVOD_CUDA_HOME=/usr/local/cuda \
        HOROVOD_BUILD_CUDA_CC_LIST=70,75,80,86,89,90 \
        bash scripts/setup_env.sh \
    && VENV=/workspace/tfconvnets/.venv bash scripts/check_gpu_stack.sh \
    && rm -rf /root/.cache
ENV PATH=/workspace/tfconvnets/.venv/bin:$PATH
CMD ["python", "main.py", "--helpfull"]
