from shipyard.cli import app

app()
