# On the GPU machine (carry .carry/wheels with nvidia-ml-py): a real ft worker reads NVML utilisation and
# memory in use at each heartbeat while a bf16 matmul loop keeps the GPU busy; ft workers list shows them.
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/wheels/*.whl
export PYTHONPATH=/tmp/site:$PWD FT_HOME=/tmp/fth PYTHONUNBUFFERED=1
ft() { python3 -m cli.main "$@"; }
ft init >/dev/null
python3 -c "from worker.jobs.gpus import nvml_gpus, nvml_usage; g=nvml_gpus(); print(g); print(nvml_usage([x.index for x in g]))"
python3 - <<'PY' &
import torch, time
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
t = time.time()
while time.time() - t < 45:
    b = a @ a
torch.cuda.synchronize()
PY
load=$!
sleep 3
timeout 40 python3 -m cli.main worker --gpus all --queues gpu > /tmp/w.log 2>&1 &
sleep 30
ft workers list
ft workers list --json | python3 -c "import json,sys; d=json.load(sys.stdin); print([(g['index'], g['utilization'], g['memory_used_bytes']) for w in d for g in w['gpus']])"
wait $load || true
tail -3 /tmp/w.log
