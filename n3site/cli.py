"""The ``n3`` command (pyproject.toml's console script): ``manage.py`` from anywhere, plus ``n3 serve``.

    n3 migrate                 every manage.py command, as ``python manage.py migrate`` runs it
    n3 qcluster                the worker
    n3 serve_policies          the inference process (the OpenAI protocol)
    n3 serve [gunicorn args]   the web server: gunicorn with n3site/gunicorn.conf.py (README "Operations")
"""
import os
import sys
from pathlib import Path

GUNICORN_CONF = Path(__file__).resolve().parent / "gunicorn.conf.py"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "n3site.settings")
    if argv[:1] == ["serve"]:
        # gunicorn in this process's place: signals (SIGTERM, SIGHUP) reach it, as they would from a Procfile.
        command = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), *argv[1:], "n3site.serve:application"]
        os.execv(sys.executable, command)
    # Function-local, as in Django's manage.py: `n3 serve` needs no Django in this process.
    from django.core.management import execute_from_command_line  # noqa: PLC0415

    execute_from_command_line(["n3", *argv])


if __name__ == "__main__":
    main()
