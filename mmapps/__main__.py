"""`python -m mmapps ...` (and `torchrun -m mmapps ...`) runs the same CLI as the `mmapps` script."""
from .cli import app

app(prog_name="mmapps")
