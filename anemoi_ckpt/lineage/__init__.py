"""Lineage: building a new file's lineage block from its parents (:mod:`.build`), checking and
drawing it for people and machines (:mod:`.view`), and finding and verifying the ancestors on disk
(:mod:`.verify`)."""
