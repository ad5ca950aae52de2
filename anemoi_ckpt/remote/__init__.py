"""Files that are not on this disk: ``download`` (a remote file fetched resumably and verified before
it is put in place, and ``localized``, a temporary local copy for what needs one: a pickle, a
conversion source) and ``fetch`` (an ``.anc`` by URL or catalogue uuid)."""
