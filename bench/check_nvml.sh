# On the GPU machine: a real `ft worker --gpus all` runs a real LoRA job while `ft workers list` shows
# the GPU (model, class, memory, NVML utilisation and memory in use). Carry .carry/wheels (with
# nvidia-ml-py) and .carry/gpumodel (a random-init Llama built by tests/conftest.py:build_tiny_model).
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/wheels/*.whl
export PYTHONPATH=/tmp/site:$PWD FT_HOME=/tmp/fth PYTHONUNBUFFERED=1
ft() { python3 -m cli.main "$@"; }
ft init >/dev/null
ft models add small --path .carry/gpumodel >/dev/null
ft datasets add faults tests/data/fault_triples_train.jsonl --format triples >/dev/null
timeout 150 python3 -m cli.main worker --gpus all --queues gpu > /tmp/w.log 2>&1 &
job=$(ft submit train --method lora -m small -d faults -t plain --epochs 400 --max-steps 100000 2>/dev/null)
for i in $(seq 1 60); do
  ft jobs list | grep -q "step" && break; sleep 2
done
sleep 25  # two heartbeats while it trains
ft workers list
ft workers list --json | python3 -c "import json,sys; print([(g['model'], g['class'], g['utilization'], g['memory_used_bytes']) for w in json.load(sys.stdin) for g in w['gpus']])"
ft jobs list | head -3
ft jobs cancel "$job" >/dev/null || true
grep -E "on GPU|step .*tok/s" /tmp/w.log | tail -2
