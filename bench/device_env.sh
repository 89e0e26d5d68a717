# Source on the GPU machine (see ../shared/GPU.md): joins the carried SmolLM2 GGUF, installs the carried
# wheels and the trimmed jieba, and exports what bench/bench_quality.py needs.
#   call 1, carry .carry/smol.part.aa .carry/data .carry/jieba.tgz:
#       cp .carry/smol.part.aa /tmp/ && mkdir -p /tmp/data /tmp/jb && cp .carry/data/*.jsonl /tmp/data/ \
#       && tar xzf .carry/jieba.tgz -C /tmp/jb
#   call 2, carry .carry/smol.part.ab .carry/wheels:  . bench/device_env.sh && python3 bench/bench_quality.py ...
if [ ! -s /tmp/smollm2.gguf ]; then
  cat /tmp/smol.part.aa .carry/smol.part.ab > /tmp/smollm2.gguf || return 1
fi
if [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/wheels/*.whl || return 1
fi
export PYTHONPATH=/tmp/site:/tmp/jb:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
q() {  # q NAME ARGS...: one bench_quality run, its log in /tmp/NAME.log, its JSON in $OUT/NAME.json
  local name=$1; shift
  timeout "${T:-590}" python3 bench/bench_quality.py --gguf /tmp/smollm2.gguf --data-dir /tmp/data --out "$OUT/$name.json" "$@" \
    >"/tmp/$name.log" 2>&1
}
