"""`gunicorn -c gunicorn.conf.py gateway:app`: the original project's gateway entry point.

The app itself lives in `kitchenware.gateway`; settings come from the environment.
"""

from kitchenware.gateway import create_app

app = create_app()
