"""Usage accounting (issue 14): participant-minutes and recording-minutes per project for the
current period, the quota on new joins.  ``meter`` is pure (an injected clock), ``book`` keeps
the totals in SQLite (the lone node's file, shared by a multi-worker node's workers; the
control plane's SQLite store)."""
