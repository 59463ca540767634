from stile.cli.main import app

app()
