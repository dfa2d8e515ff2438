"""Ready-made multilevel methods built on the mlo engine, one sub-package each."""
