"""Plan policy (being split into one module per job; for now all of it is `rules`)."""
from .rules import *  # noqa: F401,F403
