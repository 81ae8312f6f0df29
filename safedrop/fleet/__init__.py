"""A fleet of databases: the fleet file, the rollout's order (canaries, max_parallel, on_error), child
flow runs, the plan digest an approval binds each database to, and the fleet's report.
Imports the shared modules, pg/, report/ and analysis/ — never backup/ or restore/."""
