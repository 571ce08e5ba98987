"""n3 is a Python distribution (pyproject.toml): installed into a virtual environment, its documented Python API
imports from any directory and the ``n3`` command does what manage.py does; a web-only install needs no torch."""
import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from tests.sites import ROOT
from tests.system.test_web_process import HEAVY

API_IMPORT = ("from n3_server.rlhf import RLHFTrainer, TrainingConfig, TrainingResult; "
              "import n3site; print(n3site.__file__)")


def test_the_web_install_needs_no_torch_and_the_train_extra_brings_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = lambda requirements: {r.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower()  # noqa: E731
                                  for r in requirements}
    # tests/system/test_web_process.py: the web process loads none of them
    assert not names(project["dependencies"]) & set(HEAVY)
    assert set(HEAVY) <= names(project["optional-dependencies"]["train"])
    assert project["scripts"]["n3"] == "n3site.cli:main"


@pytest.mark.slow
def test_installed_package_imports_from_outside_the_checkout_and_runs_n3(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site_packages = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        check=True, capture_output=True, text=True).stdout.strip())
    # The suite's dependencies (Django, torch, pip, setuptools), offline and without copying them: a .pth line adds
    # a directory to sys.path, and does not run the .pth files in it (so not this checkout's own editable install).
    (site_packages / "n3_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")},
           "HF_HUB_OFFLINE": "1", "DEBUG": "1", "N3_VAR_DIR": str(tmp_path / "var"), "MODELS_DIR": str(tmp_path / "m")}

    before = subprocess.run([python, "-c", API_IMPORT], cwd=outside, env=env, capture_output=True, text=True)
    assert before.returncode != 0 and "No module named 'n3_server'" in before.stderr, before.stderr[-2000:]

    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-e", str(ROOT)],
        cwd=outside, env=env, capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]

    after = subprocess.run([python, "-c", API_IMPORT], cwd=outside, env=env, capture_output=True, text=True,
                           timeout=300)
    assert after.returncode == 0, after.stderr[-2000:]
    assert Path(after.stdout.strip()).parent == ROOT / "n3site"

    n3 = venv / "bin" / "n3"
    migrate = subprocess.run([n3, "migrate", "-v", "0"], cwd=outside, env=env, capture_output=True, text=True,
                             timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    assert (tmp_path / "var" / "n3.sqlite3").is_file()
    commands = subprocess.run([n3, "help"], cwd=outside, env=env, capture_output=True, text=True, timeout=300).stdout
    for command in ("qcluster", "serve_policies", "train_policy", "createsuperuser"):
        assert command in commands, commands
    gunicorn = subprocess.run([n3, "serve", "--check-config"], cwd=outside, env=env, capture_output=True, text=True,
                              timeout=300)
    assert gunicorn.returncode == 0, gunicorn.stdout[-2000:] + gunicorn.stderr[-2000:]
