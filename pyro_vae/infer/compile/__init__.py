"""Compiling what Pyro's handlers compute: the capture machinery and the one compile policy."""
