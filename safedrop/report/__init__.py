"""What a person reads: the run report as text, Markdown and the JSON artifact a fleet reads back,
Prefect artifacts, and the progress of long steps.
Imports the shared modules and pg/ only."""
