"""The production image installs no extras: its code must not need the demo/test stand-ins to import."""

import json
import os
import subprocess
import sys
from pathlib import Path

STAND_INS = ("mongomock", "moto", "aiosmtpd", "mongoeco")
BIN = Path(sys.executable).parent


def test_production_modules_and_cli_import_none_of_the_local_stand_ins():
    code = (
        "import json, sys\n"
        "import reporting_pipeline.defs.definitions, reporting_pipeline.api, reporting_pipeline.cli\n"
        "from reporting_pipeline.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {STAND_INS!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True,
                          env={**os.environ, "DAGSTER_DISABLE_TELEMETRY": "true"})
    assert "reporting-pipeline" in done.stdout  # the help text was printed
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_the_installed_command_prints_its_help():
    done = subprocess.run([str(BIN / "reporting-pipeline"), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "demo" in done.stdout and "dev" in done.stdout
