"""``python -m expflow.analysis.worker <package> --name N --module M|--file F``: one
analysis in its own process (started by ``expflow analyze``; not meant to be typed)."""

import sys

from expflow.analysis.runner import worker_main

if __name__ == "__main__":
    sys.exit(worker_main())
