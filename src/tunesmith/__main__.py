from tunesmith.cli import run

run()
