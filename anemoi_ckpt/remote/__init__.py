"""Files that are not on this disk: ``download`` (a whole remote file to a local temporary copy, for
what needs one: a pickle, a conversion source) and ``fetch`` (an ``.anc`` by URL or catalogue uuid to
a local path, resumable and verified before the rename)."""
