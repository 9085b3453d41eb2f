# CUDA image with ffmpeg and vfeat. Build: docker build -t vfeat .   Run: docker run --gpus all -v $PWD:/data vfeat extract /data/videos --out /data/feats.zarr
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends ffmpeg && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/vfeat
COPY pyproject.toml README.md ./
COPY vfeat ./vfeat
COPY configs ./configs
RUN pip install -e ".[ray]"
ENTRYPOINT ["vfeat"]
CMD ["--help"]
