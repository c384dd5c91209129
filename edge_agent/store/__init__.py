"""The on-device model store: installed bundles, the active/previous links, install, rollback, probation."""
