# Source on the GPU machine (see ../shared/GPU.md): joins the carried SmolLM2 GGUF parts, installs the
# carried wheels, copies the carried data, and exports what bench/*.py need.
# Build the carry here: EXTRA_PKGS=dacite ../shared/tools/device-carry.sh wheels (dacite is an ft
# dependency the image lacks), device-carry.sh model, cp -r ../shared/data .carry/data. At most 64 MiB
# travel with one call, the checkout (~3 MB) included, so two model parts never go together:
#   call 1, carry .carry/smol.part.aa .carry/wheels .carry/data:  cp .carry/smol.part.aa /tmp/ && cp -r .carry/data /tmp/
#   call 2, carry .carry/smol.part.ab:                            cp .carry/smol.part.ab /tmp/
#   call 3, carry .carry/smol.part.ac .carry/wheels:  export FT_COMMIT=<this checkout's HEAD>; . bench/device_env.sh && \
#       python3 bench/bench_quality.py --gguf /tmp/smollm2.gguf --data /tmp/data --out $OUT/NAME.json ...
# each within ~30 s of the last (the machine is only kept that long).
if [ ! -s /tmp/smollm2.gguf ]; then
  cat /tmp/smol.part.aa /tmp/smol.part.ab .carry/smol.part.ac > /tmp/smollm2.gguf || return 1
fi
if [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/wheels/*.whl || return 1
fi
# The copy's git metadata there is the last landed commit, not this checkout's: pass FT_COMMIT.
: "${FT_COMMIT:?run with FT_COMMIT=<git rev-parse HEAD of the checkout that sent this copy>}"
export FT_COMMIT PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
