"""Each torch process takes a share of the machine's cores chosen for its role, so that a training, the inference
process and the tests sharing a machine do not oversubscribe it (n3_server/rlhf/threads.py)."""
import subprocess
import sys

import pytest

from n3_server.rlhf import threads
from tests.sites import ROOT


@pytest.mark.parametrize("cores, training, inference", [(1, 1, 1), (2, 1, 1), (4, 2, 1), (16, 8, 4)])
def test_each_role_gets_its_share_of_the_cores(monkeypatch, cores, training, inference):
    for name in ("N3_TRAINING_THREADS", "N3_INFERENCE_THREADS", "N3_TORCH_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: cores)
    assert (threads.torch_threads("training"), threads.torch_threads("inference")) == (training, inference)
    assert training + inference <= max(2, cores)  # together, never more threads than cores (at least one each)


def test_settings_override_the_defaults_and_bad_values_are_refused(monkeypatch):
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 16)
    monkeypatch.setenv("N3_TORCH_THREADS", "3")
    monkeypatch.setenv("N3_INFERENCE_THREADS", "2")
    monkeypatch.delenv("N3_TRAINING_THREADS", raising=False)
    assert (threads.torch_threads("training"), threads.torch_threads("inference")) == (3, 2)
    for bad in ("0", "-1", "two", "1.5"):
        monkeypatch.setenv("N3_TRAINING_THREADS", bad)
        with pytest.raises(ValueError, match=f"N3_TRAINING_THREADS must be .* not '{bad}'"):
            threads.torch_threads("training")


def test_a_torch_process_uses_its_roles_threads():
    code = ("from n3_server.rlhf.threads import use_torch_threads; import torch; use_torch_threads('training'); "
            "print(torch.get_num_threads())")
    env = {"PATH": "/usr/bin:/bin", "N3_TRAINING_THREADS": "1", "OMP_NUM_THREADS": "7"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "1"
