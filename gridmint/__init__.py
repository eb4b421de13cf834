"""gridmint: the command line and the embedded demo (the composition root over edge and cloud)."""
