# Source on the GPU machine (see ../shared/GPU.md): joins the carried SmolLM2 GGUF parts, installs the
# carried wheels, copies the carried data, and exports what bench/*.py need.
#   call 1, carry .carry/smol.part.aa .carry/data:  cp .carry/smol.part.aa /tmp/ && cp -r .carry/data /tmp/
#   call 2, carry .carry/smol.part.ab:               cp .carry/smol.part.ab /tmp/
#   call 3, carry .carry/smol.part.ac .carry/wheels: . bench/device_env.sh && python3 bench/bench_quality.py \
#       --gguf /tmp/smollm2.gguf --data /tmp/data ...
if [ ! -s /tmp/smollm2.gguf ]; then
  cat /tmp/smol.part.aa /tmp/smol.part.ab .carry/smol.part.ac > /tmp/smollm2.gguf || return 1
fi
if [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/wheels/*.whl || return 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
