"""The analysis scripts shipped with expflow (``expflow analyze <package> <name>``)."""
