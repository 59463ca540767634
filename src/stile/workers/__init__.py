"""`stile serve --workers N`: a supervisor, its worker processes and what they share on one host."""
