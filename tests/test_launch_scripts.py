"""Launch scripts: their --dry-run output is the exact command/batch script they would run, and bad
arguments fail with a clear message. (Standard-library scripts: each call is a fast subprocess.)"""
import os
import shlex
import subprocess
import sys

LAUNCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch")
TRAIN = ["python", "-m", "attngan_jax.train", "--config", "configs/attngan/birds.py:tiny",
         "--workdir", "gs://bucket/run 1"]


def _launch(script, *args):
  return subprocess.run([sys.executable, os.path.join(LAUNCH, script), *args], capture_output=True, text=True,
                        timeout=60)


def test_tpu_pod_dry_run():
  out = _launch("tpu_pod.py", "--name", "pod-1", "--zone", "us-central2-b", "--project", "proj", "--env",
                "JAX_TRACEBACK_FILTERING=off", "--dry-run", "--", *TRAIN)
  assert out.returncode == 0, out.stderr
  argv = shlex.split(out.stdout.strip())
  assert argv[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod-1", "--zone=us-central2-b",
                      "--project=proj", "--worker=all"]
  assert argv[9] == "--command"
  remote = argv[10]
  assert remote.startswith("cd ~/t2i-jax && . .venv/bin/activate && export JAX_TRACEBACK_FILTERING=off; ")
  assert shlex.split(remote.split("; ", 1)[1]) == TRAIN  # the training command survives quoting intact

  detached = _launch("tpu_pod.py", "--name", "pod-1", "--zone", "z", "--detach", "--job", "birds", "--dry-run",
                     "--", *TRAIN)
  remote = shlex.split(detached.stdout.strip())[-1]
  assert remote.startswith("mkdir -p ~/t2i-logs && nohup bash -c ") and "> ~/t2i-logs/birds.log 2>&1 &" in remote

  setup = _launch("tpu_pod.py", "--name", "pod-1", "--zone", "z", "--setup", "--git-url", "https://h/r.git",
                  "--rev", "v1", "--dry-run")
  assert setup.returncode == 0 and "git clone https://h/r.git ~/t2i-jax" in setup.stdout
  assert "git checkout --quiet v1" in setup.stdout and "jax[tpu]" in setup.stdout


def test_gpu_host_dry_run():
  out = _launch("gpu_host.py", "--gpus", "0,1,2,3", "--mem-fraction", "0.8", "--dry-run", "--", *TRAIN)
  assert out.returncode == 0, out.stderr
  argv = shlex.split(out.stdout.strip())
  assert argv[:2] == ["CUDA_VISIBLE_DEVICES=0,1,2,3", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.8"]
  assert argv[2:] == TRAIN


def test_slurm_dry_run(tmp_path):
  out = _launch("slurm.py", "--nodes", "4", "--gpus-per-node", "8", "--time", "24:00:00", "--partition", "gpu",
                "--requeue", "--repo-dir", "/shared/t2i", "--job-name", "ldm", "--dry-run", "--", *TRAIN)
  assert out.returncode == 0, out.stderr
  text = out.stdout
  for directive in ("--nodes=4", "--ntasks-per-node=8", "--gpus-per-node=8", "--time=24:00:00",
                    "--partition=gpu", "--requeue", "--signal=TERM@180", "--job-name=ldm"):
    assert f"#SBATCH {directive}\n" in text
  srun = [l for l in text.splitlines() if l.startswith("srun ")]
  assert len(srun) == 1 and shlex.split(srun[0])[2:] == TRAIN
  assert "cd /shared/t2i\n" in text and text.rstrip().endswith("sbatch logs/ldm.sbatch")
  # The printed script is valid bash.
  script = text.split("\n", 1)[1].rsplit("\nsbatch ", 1)[0]
  path = tmp_path / "job.sbatch"
  path.write_text(script)
  assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_launch_errors_are_clear():
  no_command = _launch("gpu_host.py", "--dry-run")
  assert no_command.returncode == 2 and "no training command: put it after `--`" in no_command.stderr
  bad_gpus = _launch("gpu_host.py", "--gpus", "a,b", "--dry-run", "--", "python")
  assert bad_gpus.returncode == 2 and "expected comma-separated integers" in bad_gpus.stderr
  bad_time = _launch("slurm.py", "--nodes", "1", "--gpus-per-node", "1", "--time", "tomorrow", "--", "python")
  assert bad_time.returncode == 2 and "expected SLURM time" in bad_time.stderr
  no_url = _launch("tpu_pod.py", "--name", "p", "--zone", "z", "--setup", "--dry-run")
  assert no_url.returncode == 2 and "--setup needs --git-url" in no_url.stderr
  missing = _launch("tpu_pod.py", "--zone", "z", "--dry-run", "--", "python")
  assert missing.returncode == 2 and "--name" in missing.stderr
