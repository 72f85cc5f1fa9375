import json, os, subprocess, sys
def test_zz(tiny_model_dirs):
    cases = [{"model_dir": str(tiny_model_dirs["llama"]), "method": {"name": "lora"}, "batch": 4, "seq": 256}]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "4096"}
    r = subprocess.run([sys.executable, "-m", "tests.models.measure_memory", json.dumps(cases)], capture_output=True, text=True, env=env)
    print("DBG", json.loads(r.stdout)[0]["delta_bytes"] / 2**20)
