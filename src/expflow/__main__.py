from expflow.cli import command

command()
