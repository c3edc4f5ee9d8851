"""Pulumi entry point (Pulumi.yaml `main: infra/`)."""

import sys
from pathlib import Path

# Pulumi runs this file as a script from infra/; make the repository root importable so the
# program, the offline plan and the tests share one package (`infra`).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra.program import main

main()
