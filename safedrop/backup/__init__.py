"""The backup: the dump's snapshot and what the archive must hold, pg_dump, the backup directory and
its files, the archive's table of contents and sha256, the manifest, and the proof by scratch restore.
Imports the shared modules, pg/, report/ and analysis/ — never restore/ or fleet/."""
