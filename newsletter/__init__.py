"""newsletter: compile and send a publication's weekly email newsletter."""

__version__ = "0.1.0"
