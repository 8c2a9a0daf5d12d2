"""The command line: the parser and its commands, shell completion, doctor, cache-dir
maintenance, and the mount(8) helper. The only layer that prints to a terminal.
"""
