# GPU servers: CUDA 12 + cuDNN, the same pinned stack as CI, Horovod built with NCCL.
#   docker build -t tfconvnets .
#   docker run --gpus all --ipc=host -v /data:/data tfconvnets \
#       horovodrun -np 8 python main.py --arch=resnet50 --amp --data_dir=/data/imagenet --model_dir=/data/ckpt
FROM nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev g++ cmake make git libnccl2 libnccl-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /workspace/tfconvnets
COPY requirements.txt requirements-test.txt ./
COPY scripts/setup_env.sh scripts/
# setup_env.sh builds Horovod with NCCL when nvcc and nccl.h are present (they are here).
RUN PYTHON=python3.11 HOROVOD_NCCL_HOME=/usr bash scripts/setup_env.sh
ENV PATH=/workspace/tfconvnets/.venv/bin:$PATH
COPY . .
CMD ["python", "main.py", "--helpfull"]
