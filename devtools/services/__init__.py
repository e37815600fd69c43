"""The embedded servers (being split into one module per server; for now all of it is `process`)."""
from .process import *  # noqa: F401,F403
