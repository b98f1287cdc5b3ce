import os

from shipyard.cli.main import app

os.environ.setdefault("HF_HUB_OFFLINE", "1")
app()
