"""The production image installs no extras: its code must not need the demo/test stand-ins to import."""

import json
import os
import subprocess
import sys
from pathlib import Path

STAND_INS = ("mongomock", "moto", "aiosmtpd", "mongoeco")
BIN = Path(sys.executable).parent


def test_production_modules_and_cli_import_neither_the_stand_ins_nor_the_local_tooling():
    """Every module outside `reporting_pipeline.local`, and the CLI's production commands, import nothing of
    the local tooling or the stand-in packages."""
    code = (
        "import importlib, json, sys\n"
        "from pathlib import Path\n"
        "import reporting_pipeline\n"
        "root = Path(reporting_pipeline.__file__).parent\n"
        "production = ['.'.join(('reporting_pipeline',) + p.relative_to(root).with_suffix('').parts)\n"
        "              .removesuffix('.__init__') for p in sorted(root.rglob('*.py')) if 'local' not in p.relative_to(root).parts]\n"
        "for name in production:\n"
        "    importlib.import_module(name)\n"
        "from reporting_pipeline.apps.cli import main\n"
        "for argv in (['--help'], ['status', '--help'], ['reconcile', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(json.dumps([len(production), sorted(m for m in sys.modules if m.split('.')[0] in {STAND_INS!r}\n"
        "                   or m.startswith('reporting_pipeline.local'))]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True,
                          env={**os.environ, "DAGSTER_DISABLE_TELEMETRY": "true"})
    assert "reporting-pipeline" in done.stdout  # the help text was printed
    imported, local = json.loads(done.stdout.splitlines()[-1])
    assert imported > 30 and local == []


def test_the_installed_command_prints_its_help():
    done = subprocess.run([str(BIN / "reporting-pipeline"), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "demo" in done.stdout and "dev" in done.stdout
