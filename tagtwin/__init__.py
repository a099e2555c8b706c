"""The ``tagtwin`` command line, the one entry point that ties the rooms together."""
