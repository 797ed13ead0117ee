"""Command-line tools that prepare data for the trainer."""
